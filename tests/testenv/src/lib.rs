//! An envtest-style local control plane: etcd and kube-apiserver as child processes on loopback.
//!
//! Portico's controllers and webhook are judged by what a real apiserver ends up holding, so the
//! integration suite and `portico dev` both start one from here. The binaries come from the
//! directory named by `KUBEBUILDER_ASSETS` (default `/usr/local/kubebuilder/bin`, the envtest
//! convention); etcd may also come from `PATH`. When kube-apiserver is absent, [`Assets::discover`]
//! says so in one line and callers skip rather than fail.

mod assets;
mod certs;
mod control_plane;
pub mod fixtures;
mod process;
mod shared;

pub use assets::{Assets, MissingAssets};
pub use control_plane::{ControlPlane, ControlPlaneConfig, Error};
pub use shared::{shared, skip_notice};
