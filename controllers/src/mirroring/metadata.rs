//! Metadata of mirrored slices: name prefix, labels, annotations, owner reference, and the
//! check whether an existing slice's metadata is still right.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{MirrorConfig, MirrorError};
use crate::keys::{
    ANNOTATION_LAST_APPLIED_CONFIG, ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_MANAGED_BY, LABEL_SERVICE_NAME,
};

/// Labels the controller sets itself, whatever the Endpoints carries.
const RESERVED_LABELS: [&str; 2] = [LABEL_SERVICE_NAME, LABEL_MANAGED_BY];
/// Annotations of the Endpoints that are not mirrored: the trigger time describes the
/// Endpoints write, and kubectl's last-applied configuration an object kubectl never applied.
const UNMIRRORED_ANNOTATIONS: [&str; 2] = [
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME,
    ANNOTATION_LAST_APPLIED_CONFIG,
];

/// Whether `s` is a DNS-1123 subdomain (what object names must be): at most 253 characters,
/// dot-separated labels of lowercase alphanumerics and `-`, each starting and ending with an
/// alphanumeric.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `generateName` of new slices: `<endpoints-name>-`, or the bare name when that prefix fails
/// the apiserver's name-prefix validation. That validation masks the trailing dash by
/// replacing the last *two* characters with `a` (an upstream quirk, reproduced), so for every
/// name the apiserver accepts for an Endpoints object the dashed prefix passes; the fallback
/// only matters for names that could not have come from the apiserver.
pub(super) fn generate_name(endpoints_name: &str) -> String {
    let mut masked = endpoints_name.to_string();
    let valid = masked.pop().is_some() && {
        masked.push('a');
        is_dns1123_subdomain(&masked)
    };
    if valid {
        format!("{endpoints_name}-")
    } else {
        endpoints_name.to_string()
    }
}

fn without<'a>(map: Option<&'a BTreeMap<String, String>>, keys: &[&str]) -> BTreeMap<&'a str, &'a str> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// What every slice mirrored from one Endpoints object carries, computed once per sync.
pub(super) struct Template {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owner: OwnerReference,
}

impl Template {
    /// Labels: all of the Endpoints', then service-name (the Endpoints name) and managed-by
    /// (our name; this is where an adopted slice changes hands) overwrite. Annotations: all
    /// but [`UNMIRRORED_ANNOTATIONS`]. Owner: the Endpoints, as controller, blocking deletion.
    pub(super) fn new(endpoints: &Endpoints, cfg: &MirrorConfig) -> Result<Self, MirrorError> {
        let meta = &endpoints.metadata;
        let name = meta.name.clone().ok_or(MirrorError::MissingMetadata("name"))?;
        let namespace = meta
            .namespace
            .clone()
            .ok_or(MirrorError::MissingMetadata("namespace"))?;
        let uid = meta.uid.clone().ok_or(MirrorError::MissingMetadata("uid"))?;
        let mut labels = meta.labels.clone().unwrap_or_default();
        labels.insert(LABEL_SERVICE_NAME.to_string(), name.clone());
        labels.insert(LABEL_MANAGED_BY.to_string(), cfg.managed_by.clone());
        let annotations = without(meta.annotations.as_ref(), &UNMIRRORED_ANNOTATIONS)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let owner = OwnerReference {
            api_version: "v1".to_string(),
            kind: "Endpoints".to_string(),
            name: name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        Ok(Template {
            namespace,
            name,
            labels,
            annotations,
            owner,
        })
    }

    /// A slice with this metadata. Without `replaces` it is new (`generateName`, no name);
    /// otherwise it takes the name and resourceVersion of the slice it replaces. Nothing
    /// else of the replaced slice is kept: labels and annotations are exactly the mirrored
    /// ones, as upstream writes them.
    pub(super) fn slice(
        &self,
        address_type: &str,
        ports: &[EndpointPort],
        endpoints: Vec<Endpoint>,
        replaces: Option<&EndpointSlice>,
    ) -> EndpointSlice {
        let mut meta = ObjectMeta {
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels.clone()),
            annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        };
        match replaces {
            Some(old) => set_replaced(&mut meta, old),
            None => meta.generate_name = Some(generate_name(&self.name)),
        }
        EndpointSlice {
            metadata: meta,
            address_type: address_type.to_string(),
            endpoints,
            ports: Some(ports.to_vec()),
        }
    }

    /// Whether an existing slice's metadata needs no write: its labels other than
    /// service-name and managed-by equal the Endpoints' (an adopted manager name therefore
    /// never causes a write), its annotations equal the mirrored ones (absent and empty
    /// alike), and its owner references are exactly ours.
    ///
    /// Two differences from upstream, both to avoid writes that never settle or never
    /// happen: upstream compares the slice's labels without the two reserved keys to *all*
    /// Endpoints labels, so an Endpoints carrying one of those keys has its slices rewritten
    /// on every sync; here both sides leave them out. And upstream does not look at owner
    /// references, so a slice still owned by an earlier Endpoints of the same name stays so
    /// until the garbage collector deletes it; here it is rewritten with the new owner.
    pub(super) fn metadata_matches(&self, slice: &EndpointSlice) -> bool {
        let annotations: BTreeMap<&str, &str> = without(slice.metadata.annotations.as_ref(), &[]);
        without(slice.metadata.labels.as_ref(), &RESERVED_LABELS)
            == without(Some(&self.labels), &RESERVED_LABELS)
            && annotations == without(Some(&self.annotations), &[])
            && slice.metadata.owner_references.as_deref().unwrap_or_default()
                == std::slice::from_ref(&self.owner)
    }
}

/// Turns a new slice into a replacement of `old`: its name and resourceVersion, no
/// generateName.
pub(super) fn set_replaced(meta: &mut ObjectMeta, old: &EndpointSlice) {
    meta.name.clone_from(&old.metadata.name);
    meta.resource_version.clone_from(&old.metadata.resource_version);
    meta.generate_name = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_table() {
        let longest = "a".repeat(253);
        let too_long = "a".repeat(254);
        let cases = [
            ("web", "web-".to_string()),
            ("w", "w-".to_string()),
            ("my.svc", "my.svc-".to_string()),
            ("a.b", "a.b-".to_string()),
            (longest.as_str(), format!("{longest}-")),
            (too_long.as_str(), too_long.clone()),
            ("Web", "Web".to_string()),
            ("web.", "web.-".to_string()), // as upstream: only the last character is checked away
            ("", String::new()),
        ];
        for (name, want) in cases {
            assert_eq!(generate_name(name), want, "{}", name.len());
        }
    }

    #[test]
    fn subdomain_table() {
        for (s, ok) in [
            ("a", true),
            ("a-b.c", true),
            ("0a", true),
            ("", false),
            ("A", false),
            ("a.", false),
            ("-a", false),
            ("a-", false),
            ("a_b", false),
        ] {
            assert_eq!(is_dns1123_subdomain(s), ok, "{s:?}");
        }
    }
}
