//! Slice metadata: names, labels, owner references, annotations, and the placeholder check.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::Config;
use crate::address_family::AddressType;
use crate::keys::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_HEADLESS, LABEL_MANAGED_BY, LABEL_SERVICE_NAME,
};
use crate::service_predicates::{ServiceId, is_service_ip_set};
use crate::trigger_time::format_trigger_time;

const RESERVED_LABELS: [&str; 3] = [LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS];

/// `generateName` of new slices: `<service>-`. The apiserver truncates the base to 58
/// characters before appending 5 random ones.
pub(crate) fn generate_name(service_name: &str) -> String {
    format!("{service_name}-")
}

/// The labels every slice we write carries: the Service's labels minus the reserved keys, the
/// headless label when the Service has no cluster IP, and the service-name and managed-by
/// labels (managed-by is always *our* name, which is how an adopted slice changes hands).
pub(crate) fn desired_labels(svc: &Service, id: &ServiceId, cfg: &Config) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !RESERVED_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !is_service_ip_set(svc) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.to_string(), id.name.clone());
    labels.insert(LABEL_MANAGED_BY.to_string(), cfg.managed_by.clone());
    labels
}

fn non_reserved(labels: Option<&BTreeMap<String, String>>) -> BTreeMap<&str, &str> {
    labels
        .into_iter()
        .flatten()
        .filter(|(k, _)| !RESERVED_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Whether the slice's own (non-reserved) labels differ from the Service's; a write is needed
/// then. Reserved labels alone (headless flipping, an adopted manager name) never cause a
/// write; they are corrected when the slice is written for another reason.
pub(crate) fn labels_changed(slice: &EndpointSlice, svc: &Service) -> bool {
    non_reserved(slice.metadata.labels.as_ref()) != non_reserved(svc.metadata.labels.as_ref())
}

/// The controller owner reference to the Service; garbage collection deletes the slices with
/// the Service.
pub(crate) fn owner_reference(id: &ServiceId) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "Service".to_string(),
        name: id.name.clone(),
        uid: id.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The slice is owned by the Service with this UID (any owner reference of kind `Service`,
/// apiVersion `v1` and that UID). Slices with our labels but another owner are leftovers of a
/// deleted Service of the same name and get deleted, never recycled.
pub(crate) fn owned_by(slice: &EndpointSlice, uid: &str) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.kind == "Service" && r.api_version == "v1")
}

/// A new, unnamed slice for the Service with the given ports and no endpoints.
pub(crate) fn new_slice(
    id: &ServiceId,
    labels: &BTreeMap<String, String>,
    ports: Vec<EndpointPort>,
    at: AddressType,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&id.name)),
            namespace: Some(id.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner_reference(id)]),
            ..Default::default()
        },
        address_type: at.as_str().to_string(),
        endpoints: Vec::new(),
        ports: Some(ports),
    }
}

/// Sets (or, without a trigger time, removes) the last-change-trigger-time annotation. Done on
/// every slice we create or update, never on unchanged ones.
pub(crate) fn set_trigger_time(meta: &mut ObjectMeta, trigger_time: Option<&Time>) {
    match trigger_time {
        Some(t) => {
            meta.annotations.get_or_insert_with(BTreeMap::new).insert(
                ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
                format_trigger_time(t),
            );
        }
        None => {
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME);
                if a.is_empty() {
                    meta.annotations = None;
                }
            }
        }
    }
}

/// Whether an existing slice already is the placeholder we would create, so it is left alone
/// instead of being rewritten on every sync. Compared: namespace, labels (exactly, except that
/// an adopted manager name counts as ours), owner references, address type, and empty ports
/// and endpoints (`null` and `[]` alike). Annotations are not compared.
pub(crate) fn is_same_placeholder(
    existing: &EndpointSlice,
    placeholder: &EndpointSlice,
    cfg: &Config,
) -> bool {
    let mut labels = existing.metadata.labels.clone().unwrap_or_default();
    if let Some(m) = labels.get_mut(LABEL_MANAGED_BY)
        && cfg.adopt_from.as_deref() == Some(m.as_str())
    {
        *m = cfg.managed_by.clone();
    }
    existing.metadata.namespace == placeholder.metadata.namespace
        && Some(&labels) == placeholder.metadata.labels.as_ref()
        && existing.metadata.owner_references.clone().unwrap_or_default()
            == placeholder.metadata.owner_references.clone().unwrap_or_default()
        && existing.address_type == placeholder.address_type
        && existing.ports.as_deref().unwrap_or_default().is_empty()
        && placeholder.ports.as_deref().unwrap_or_default().is_empty()
        && existing.endpoints.is_empty()
        && placeholder.endpoints.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    fn id(s: &Service) -> ServiceId {
        ServiceId::of(s).unwrap()
    }

    #[test]
    fn labels_table() {
        let cfg = Config::default();
        let s = svc("web")
            .labels(&[
                ("team", "a"),
                (LABEL_SERVICE_NAME, "evil"),
                (LABEL_HEADLESS, "x"),
                (LABEL_MANAGED_BY, "me"),
            ])
            .build();
        let l = desired_labels(&s, &id(&s), &cfg);
        let want: BTreeMap<String, String> = [
            ("team", "a"),
            (LABEL_SERVICE_NAME, "web"),
            (LABEL_MANAGED_BY, cfg.managed_by.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(l, want, "reserved keys on the Service are ignored; not headless");

        let h = svc("web").headless().build();
        assert_eq!(
            desired_labels(&h, &id(&h), &cfg)
                .get(LABEL_HEADLESS)
                .map(String::as_str),
            Some("")
        );
        let no_ip = svc("web").cluster_ip("").build();
        assert!(desired_labels(&no_ip, &id(&no_ip), &cfg).contains_key(LABEL_HEADLESS));
    }

    #[test]
    fn label_change_detection() {
        let s = svc("web").labels(&[("team", "a")]).build();
        let base = slice("web-1", &s, &Config::default().managed_by)
            .label("team", "a")
            .build();
        assert!(!labels_changed(&base, &s));
        let headless_only = slice("web-1", &s, "x")
            .label("team", "a")
            .label(LABEL_HEADLESS, "")
            .build();
        assert!(
            !labels_changed(&headless_only, &s),
            "reserved labels alone never trigger a write"
        );
        let extra = slice("web-1", &s, "x")
            .label("team", "a")
            .label("foo", "bar")
            .build();
        assert!(labels_changed(&extra, &s), "third-party labels are removed");
        let missing = slice("web-1", &s, "x").build();
        assert!(labels_changed(&missing, &s));
        let unlabelled = svc("web").build();
        assert!(
            !labels_changed(&missing, &unlabelled),
            "nil and empty labels are equal"
        );
    }

    #[test]
    fn owner_and_names() {
        let s = svc("web").build();
        let i = id(&s);
        let r = owner_reference(&i);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("v1", "Service", "uid-web")
        );
        assert_eq!((r.controller, r.block_owner_deletion), (Some(true), Some(true)));
        let owned = slice("a", &s, "m").build();
        assert!(owned_by(&owned, "uid-web"));
        assert!(!owned_by(
            &slice("a", &s, "m").owner_uid("old").build(),
            "uid-web"
        ));
        assert_eq!(generate_name("web"), "web-");
    }

    #[test]
    fn trigger_time_annotation() {
        let mut meta = ObjectMeta::default();
        set_trigger_time(&mut meta, Some(&t(0)));
        assert_eq!(
            meta.annotations.as_ref().unwrap()[ANNOTATION_LAST_CHANGE_TRIGGER_TIME],
            "2023-11-14T22:13:20Z"
        );
        set_trigger_time(&mut meta, None);
        assert_eq!(meta.annotations, None);
    }
}
