//! Pure bitmap allocators for Service ClusterIPs and NodePorts.
//!
//! [`IpAllocator`] hands out addresses of a CIDR (IPv4, or IPv6 up to a /96) and
//! [`PortAllocator`] node ports of a `lo-hi` range, both over a roaring bitmap of offsets with
//! upstream's static/dynamic bands, error strings ([`AllocError`]) and apiserver answers
//! ([`AllocError::refusal`]). State round-trips through [`Snapshot`]. No I/O, no async, no locks:
//! callers serialize access.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod allocator;
mod allocator_error;
mod bitmap;
pub mod field;
mod free_search;
mod ip;
mod port;
mod refusal;
mod snapshot;

pub use allocator::{Allocator, ValueRange};
pub use allocator_error::{AllocError, RangeError, SnapshotError};
pub use bitmap::{Band, BandStats};
pub use ip::{IpAllocator, IpRange, parse_ipv4_sloppy, parse_service_ip};
pub use port::{PortAllocator, PortRange};
pub use refusal::{Refusal, Request};
pub use snapshot::Snapshot;
