//! One sync of the legacy Endpoints controller.

use k8s_openapi::api::core::v1::{Endpoints, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::slice_writes::namespace_terminating;
use crate::{Context, SyncError, cached_service, lock, selected_pods};
use portico_controllers::legacy_endpoints::{EndpointsAction, is_leftover_candidate, reconcile};
use portico_controllers::{ServiceKey, is_service_handled};

pub(crate) async fn sync(ctx: &Context, key: &ServiceKey) -> Result<(), SyncError> {
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let cached = ctx
        .caches
        .endpoints
        .get(&ObjectRef::new(&key.name).within(&key.namespace));
    let Some(svc) = cached_service(ctx, key) else {
        lock(&ctx.endpoints_stale).delete(key);
        lock(&ctx.endpoints_triggers).delete_service(key);
        // Leader-election locks are Endpoints without a Service; never delete those. When the
        // cache has no object, delete anyway: it may just not have seen our own create yet,
        // and Endpoints updates requeue nothing.
        if cached.as_deref().is_none_or(is_leftover_candidate) {
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => ctx.metrics.endpoints_changes.with_label_values(&["delete"]).inc(),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(SyncError::Api {
                        verb: "delete",
                        kind: "Endpoints",
                        name: key.name.clone(),
                        source,
                    });
                }
            }
        }
        return Ok(());
    };
    if !is_service_handled(&svc) {
        return Ok(());
    }
    if cached
        .as_deref()
        .is_some_and(|ep| lock(&ctx.endpoints_stale).is_stale(ep))
    {
        return Err(SyncError::Stale("Endpoints"));
    }
    let pods = selected_pods(ctx, &svc);
    let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let trigger = lock(&ctx.endpoints_triggers).compute(&svc, &pods);
    let (verb, result) = match reconcile(&svc, &pods, cached.as_deref(), trigger.as_ref())? {
        EndpointsAction::Unchanged => return Ok(()),
        EndpointsAction::Create(ep) => ("create", api.create(&PostParams::default(), &ep).await),
        EndpointsAction::Update(ep) => (
            "update",
            api.replace(&key.name, &PostParams::default(), &ep).await,
        ),
    };
    match result {
        Ok(written) => {
            lock(&ctx.endpoints_stale).record_write(cached.as_deref(), &written);
            ctx.metrics.endpoints_changes.with_label_values(&[verb]).inc();
            Ok(())
        }
        Err(kube::Error::Api(s)) if verb == "create" && namespace_terminating(&s) => Ok(()),
        Err(source) => {
            let e = SyncError::Api {
                verb,
                kind: "Endpoints",
                name: key.name.clone(),
                source,
            };
            if !e.is_conflict() {
                let cause = e.cause();
                let (reason, note) = if verb == "create" {
                    (
                        "FailedToCreateEndpoint",
                        format!("Failed to create endpoint for service {key}: {cause}"),
                    )
                } else {
                    (
                        "FailedToUpdateEndpoint",
                        format!("Failed to update endpoint {key}: {cause}"),
                    )
                };
                // As upstream, about the Endpoints object, even one not created yet.
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Endpoints".into()),
                    namespace: Some(key.namespace.clone()),
                    name: Some(key.name.clone()),
                    uid: cached.as_deref().and_then(|ep| ep.metadata.uid.clone()),
                    ..Default::default()
                };
                ctx.endpoints_events
                    .publish(&reference, EventType::Warning, reason, "Sync", note)
                    .await;
            }
            Err(e)
        }
    }
}
