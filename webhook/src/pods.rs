//! A pod cache for the `targetPort` warning, for callers that do not already keep one.
//!
//! The controllers keep a reflector of pods anyway; pass its `Store<Pod>` to
//! [`crate::Validator::with_pods`] instead of starting a second one. The warning is best-effort:
//! until the store has synced, a Service simply gets no warning.

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

/// A reflector of the pods `api` sees (all namespaces with `Api::all`), and the future that keeps
/// it up to date; run the future (it ends only when its stream does, i.e. never in practice).
/// Managed fields are dropped to save memory.
pub fn pod_store(api: Api<Pod>) -> (Store<Pod>, impl Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|pod: &mut Pod| pod.managed_fields_mut().clear())
        .reflect(writer);
    let run = stream.for_each(|event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "pod watch for the webhook's targetPort warning failed; retrying");
        }
        std::future::ready(())
    });
    (reader, run)
}
