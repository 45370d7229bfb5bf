//! Allocator, range and snapshot errors.
//!
//! `AllocError` renders exactly like upstream's allocator-level errors (v1.24+ wording, see
//! `refusal` for what the apiserver makes of them), so callers can compare strings with a real
//! cluster's answers.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::port::PortRange;

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free address or port is left (only from `allocate_next`/`peek_next`).
    #[error("range is full")]
    Full,
    /// The requested IP is already held.
    #[error("provided IP is already allocated")]
    IpAllocated,
    /// The requested port is already held.
    #[error("provided port is already allocated")]
    PortAllocated,
    /// The requested IP is outside the allocatable part of the range (wrong family, network or
    /// broadcast address, or outside the CIDR).
    #[error("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}")]
    IpNotInRange {
        /// The rejected address.
        ip: IpAddr,
        /// The configured range.
        cidr: IpNet,
    },
    /// The requested IP lies in no range of its family (upstream's multi-CIDR allocator,
    /// `ErrMismatchedNetwork`, 1.33+).
    #[error("the provided network does not match the current range")]
    MismatchedNetwork,
    /// The requested port is outside the range (including negative or > 65535 values).
    #[error("provided port is not in the valid range. The range of valid ports is {range}")]
    PortNotInRange {
        /// The rejected port, as it appeared in the Service.
        port: i32,
        /// The configured range.
        range: PortRange,
    },
    /// A requested clusterIP string is not an IP address.
    #[error("failed to parse service IP {}", crate::field::go_quote(.value))]
    InvalidIp {
        /// The string as given.
        value: String,
    },
}

/// Why a range could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The CIDR string does not parse.
    #[error("invalid CIDR address: {0}")]
    InvalidCidr(String),
    /// More than 2^32 addresses: offsets would no longer fit the 32-bit roaring bitmap.
    #[error("specified range {cidr} is too large; for 128-bit addresses, the mask must be >= 96")]
    TooLarge {
        /// The refused range.
        cidr: IpNet,
    },
    /// A bound above 65535.
    #[error("the port range cannot be greater than 65535: {0}")]
    PortTooLarge(String),
    /// `hi < lo`.
    #[error("end port cannot be less than start port: {0}")]
    EndBeforeStart(String),
    /// Not `N`, `A-B` or `A+offset`.
    #[error("unable to parse port range: {0}")]
    UnparsablePorts(String),
    /// An empty string (upstream accepts it as an empty range; an allocator needs ports).
    #[error("the port range must not be empty")]
    EmptyPortRange,
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot belongs to another CIDR.
    #[error("the provided network does not match the current range")]
    MismatchedNetwork,
    /// The snapshot belongs to another port range.
    #[error("the provided port range does not match the current port range")]
    MismatchedPortRange,
    /// The bitmap marks an offset the range does not have.
    #[error("restoring snapshot encountered offset {offset} beyond the range size {size}")]
    OffsetOutOfRange {
        /// The first offending offset.
        offset: u32,
        /// Number of allocatable items in the range.
        size: u64,
    },
    /// The bytes are not a snapshot / not a portable roaring bitmap.
    #[error("restoring snapshot encountered {0}")]
    Corrupt(String),
}
