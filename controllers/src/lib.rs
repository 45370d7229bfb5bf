//! EndpointSlice, Endpoints and EndpointSlice mirroring controllers: their decisions, as pure functions.
//!
//! Everything here is a function from cached objects (Service, Pods, Nodes, existing
//! EndpointSlices / Endpoints) and configuration to a plan of writes. There is no I/O, no
//! async and no client: the caller owns the reflectors, the work queue and the API calls, and
//! feeds the outcome of its writes back into the small state machines provided here
//! ([`endpointslice::GenerationTracker`], [`legacy_endpoints::StaleEndpointsTracker`],
//! [`TriggerTimeTracker`]).
//!
//! * [`endpointslice`]: slices of at most `max_endpoints_per_slice` endpoints per address type
//!   and port mapping, packed with upstream's minimal-churn algorithm; adoption of another
//!   manager's slices.
//! * [`legacy_endpoints`]: the legacy `Endpoints` object, with truncation to 1000 addresses.
//! * [`mirroring`]: EndpointSlices mirrored from the Endpoints of Services without a selector.
//! * [`triggers`]: which Services a pod event concerns.
//! * [`routing`]: which Service keys a watch event queues, for which controller and how soon.
//! * [`fields`]: which fields of cached objects are read, for trimming the caches.
//!
//! Behaviour follows the newest upstream Kubernetes controllers; deliberate differences are
//! documented where they occur. All outputs are deterministic for a given input.

mod address_family;
pub mod endpointslice;
pub mod fields;
pub mod generated_name;
pub mod keys;
pub mod legacy_endpoints;
pub mod mirroring;
pub(crate) mod natural;
mod pod_predicates;
mod reconcile_error;
pub mod routing;
mod service_predicates;
mod trigger_time;
pub mod triggers;

#[cfg(test)]
mod builders;
#[cfg(test)]
mod proptests;

pub use address_family::AddressType;
pub use reconcile_error::{ReconcileError, SkippedPod};
pub use service_predicates::{ServiceKey, is_service_handled, labels_match, select_pods, selects};
pub use trigger_time::{TriggerTimeTracker, format_trigger_time};
