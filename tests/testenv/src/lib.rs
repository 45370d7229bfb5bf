//! An envtest-style local control plane: etcd and kube-apiserver as child processes on loopback.
//!
//! Portico's controllers and webhook are judged by what a real apiserver ends up holding, so the
//! integration suite and `portico dev` both start one from here. The binaries are those
//! `scripts/build-k8s` builds from the `k8s.io/kubernetes` Go module into its cache (the pinned
//! release, [`pinned_version`]), or those in `KUBEBUILDER_ASSETS` (the envtest convention) when it
//! is set. When kube-apiserver is absent, [`Assets::discover`] says so in one line and callers
//! skip rather than fail, unless `PORTICO_REQUIRE_INTEGRATION` is set (to anything but empty, `0`
//! or `false`).

mod assets;
mod certs;
mod control_plane;
pub mod fixtures;
mod process;
mod shared;

pub use assets::{Assets, MissingAssets, VERSION_ENV, cache_dir, pinned_version};
pub use control_plane::{ControlPlane, ControlPlaneConfig, Error};
pub use process::{cpu_seconds, free_port};
pub use shared::{REQUIRE_ENV, integration_required, shared, skip_notice};
