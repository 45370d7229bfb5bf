//! Stale-cache protection: remember the generation of every slice we wrote or deleted, and
//! refuse to reconcile from a cache that has not caught up with those writes.
//!
//! Without this, a sync right after our own write could read the old slice from the informer
//! cache, conclude the endpoints are missing, and create duplicates (or undo the write).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::service_key_for_slice;
use crate::service::ServiceKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// We wrote the slice; the cache must show at least this generation.
    Generation(i64),
    /// We deleted the slice; the cache must not show it any more.
    Deleted,
}

#[derive(Debug, Clone, Default)]
struct ServiceSlices {
    /// UID of the Service incarnation the recorded writes belong to (from the slices' owner
    /// reference). A Service deleted and recreated under the same name gets a fresh record,
    /// so writes for the old one can never make the new one look stale forever.
    service_uid: Option<String>,
    slices: HashMap<String, Expected>,
}

/// Per-Service record of the slice generations this controller produced.
///
/// Generations: the apiserver sets 1 on create and bumps it on every change of endpoints,
/// ports, address type or labels (not annotations), so "cache generation ≥ ours" means the
/// cache has seen our write. Slices are identified by UID.
///
/// Feed it from the write path and the slice event handlers; see the module docs of
/// [`crate::endpointslice`] for the exact call sites.
#[derive(Debug, Clone, Default)]
pub struct GenerationTracker {
    services: HashMap<ServiceKey, ServiceSlices>,
}

fn uid(slice: &EndpointSlice) -> Option<&str> {
    slice.metadata.uid.as_deref().filter(|u| !u.is_empty())
}

fn owner_service_uid(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "Service" && r.api_version == "v1" && r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

impl GenerationTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a slice as returned by a successful create or update.
    pub fn record_write(&mut self, written: &EndpointSlice) {
        let (Some(key), Some(id)) = (service_key_for_slice(written), uid(written)) else {
            return;
        };
        let entry = self.services.entry(key).or_default();
        if let Some(owner) = owner_service_uid(written) {
            if entry.service_uid.as_deref().is_some_and(|u| u != owner) {
                entry.slices.clear();
            }
            entry.service_uid = Some(owner.to_string());
        }
        entry.slices.insert(
            id.to_string(),
            Expected::Generation(written.metadata.generation.unwrap_or(0)),
        );
    }

    /// Records that we deleted a slice (after the DELETE succeeded or returned 404).
    pub fn expect_deletion(&mut self, deleted: &EndpointSlice) {
        let (Some(key), Some(id)) = (service_key_for_slice(deleted), uid(deleted)) else {
            return;
        };
        self.services
            .entry(key)
            .or_default()
            .slices
            .insert(id.to_string(), Expected::Deleted);
    }

    /// Whether we track this slice.
    pub fn has(&self, slice: &EndpointSlice) -> bool {
        let (Some(key), Some(id)) = (service_key_for_slice(slice), uid(slice)) else {
            return false;
        };
        self.services.get(&key).is_some_and(|s| s.slices.contains_key(id))
    }

    /// For add/update events: whether the event is news (a slice we did not write, or a
    /// generation newer than ours, i.e. someone else changed it) and the Service must be
    /// synced. Echoes of our own writes return false.
    pub fn should_sync(&self, observed: &EndpointSlice) -> bool {
        let (Some(key), Some(id)) = (service_key_for_slice(observed), uid(observed)) else {
            return true;
        };
        match self.services.get(&key).and_then(|s| s.slices.get(id)) {
            None => true,
            Some(Expected::Deleted) => true,
            Some(Expected::Generation(g)) => observed.metadata.generation.unwrap_or(0) > *g,
        }
    }

    /// For delete events of a slice: forgets it and returns whether the Service must be
    /// synced, i.e. the deletion was not ours (someone deleted a slice we still want).
    pub fn handle_deletion(&mut self, deleted: &EndpointSlice) -> bool {
        let (Some(key), Some(id)) = (service_key_for_slice(deleted), uid(deleted)) else {
            return true;
        };
        let Some(state) = self.services.get_mut(&key) else {
            return true;
        };
        !matches!(state.slices.remove(id), Some(Expected::Deleted))
    }

    /// Forgets a slice under the Service it was listed for (`old`: the slice as it was), when it
    /// was relabelled to another Service or manager and will no longer appear in that
    /// Service's listings. Without this the Service would wait for ever for the slice to come
    /// back. A write recorded for the Service it joined is kept.
    pub fn slice_left(&mut self, old: &EndpointSlice) {
        let (Some(key), Some(id)) = (service_key_for_slice(old), uid(old)) else {
            return;
        };
        if let Some(state) = self.services.get_mut(&key) {
            state.slices.remove(id);
        }
    }

    /// Whether the cache is behind our own writes for this Service: a listed slice is one we
    /// deleted or older than what we wrote, or a slice we wrote (and did not delete) is
    /// missing from the listing. `observed` is the list the sync would reconcile (from
    /// [`super::slices_for_service`]). When true, do not reconcile; retry later.
    pub fn is_stale(&self, svc: &Service, observed: &[&EndpointSlice]) -> bool {
        let Some(key) = ServiceKey::of_service(svc) else {
            return false;
        };
        let Some(state) = self.services.get(&key) else {
            return false;
        };
        if let (Some(mine), Some(current)) = (&state.service_uid, svc.metadata.uid.as_ref())
            && mine != current
        {
            return false;
        }
        let mut seen = std::collections::HashSet::new();
        for s in observed {
            let Some(id) = uid(s) else { continue };
            seen.insert(id);
            match state.slices.get(id) {
                Some(Expected::Deleted) => return true,
                Some(Expected::Generation(g)) if s.metadata.generation.unwrap_or(0) < *g => return true,
                _ => {}
            }
        }
        state
            .slices
            .iter()
            .any(|(id, e)| matches!(e, Expected::Generation(_)) && !seen.contains(id.as_str()))
    }

    /// Forgets a Service (call when it is deleted).
    pub fn delete_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    fn gen_slice(s: &Service, name: &str, generation: i64) -> EndpointSlice {
        let mut sl = slice(name, s, "m").build();
        sl.metadata.generation = Some(generation);
        sl
    }

    #[test]
    fn staleness_by_generation() {
        let s = svc("web").build();
        let mut tr = GenerationTracker::new();
        assert!(
            !tr.is_stale(&s, &[&gen_slice(&s, "a", 10)]),
            "untracked service is never stale"
        );
        tr.record_write(&gen_slice(&s, "a", 12));
        // (informer generation, stale?)
        for (observed, want) in [(10, true), (11, true), (12, false), (13, false)] {
            assert_eq!(
                tr.is_stale(&s, &[&gen_slice(&s, "a", observed)]),
                want,
                "observed gen {observed}"
            );
        }
        let mut tr2 = GenerationTracker::new();
        tr2.record_write(&gen_slice(&s, "a", 1));
        assert!(!tr2.is_stale(&s, &[&gen_slice(&s, "a", 10)]));
    }

    #[test]
    fn staleness_by_presence() {
        let s = svc("web").build();
        let mut tr = GenerationTracker::new();
        let a = gen_slice(&s, "a", 1);
        let b = gen_slice(&s, "b", 3);
        tr.record_write(&a);
        assert!(tr.is_stale(&s, &[]), "our create not in the cache yet");
        assert!(!tr.is_stale(&s, &[&a]));
        tr.expect_deletion(&b);
        assert!(tr.is_stale(&s, &[&a, &b]), "our delete not seen yet");
        assert!(!tr.is_stale(&s, &[&a]), "missing deleted slice is fine");
        assert!(!tr.handle_deletion(&b), "expected deletion: no resync");
        assert!(!tr.has(&b));
        assert!(tr.handle_deletion(&a), "someone deleted a slice we wrote");
        assert!(!tr.is_stale(&s, &[]));
    }

    #[test]
    fn should_sync_filters_own_echoes() {
        let s = svc("web").build();
        let mut tr = GenerationTracker::new();
        let a = gen_slice(&s, "a", 2);
        assert!(tr.should_sync(&a), "untracked");
        tr.record_write(&a);
        assert!(!tr.should_sync(&a), "echo of our write");
        assert!(!tr.should_sync(&gen_slice(&s, "a", 1)), "older");
        assert!(tr.should_sync(&gen_slice(&s, "a", 3)), "someone else wrote it");
    }

    #[test]
    fn service_recreated_and_deleted() {
        let old = svc("web").uid("old").build();
        let new = svc("web").uid("new").build();
        let mut tr = GenerationTracker::new();
        let a = slice("a", &old, "m").owner_uid("old").build();
        tr.record_write(&a);
        assert!(tr.is_stale(&old, &[]));
        assert!(
            !tr.is_stale(&new, &[]),
            "writes for the old incarnation do not block the new one"
        );
        let b = slice("b", &new, "m").owner_uid("new").build();
        tr.record_write(&b);
        assert!(!tr.has(&a), "state reset for the new incarnation");
        assert!(!tr.is_stale(&new, &[&b]));
        tr.delete_service(&ServiceKey::new("default", "web"));
        assert!(!tr.is_stale(&new, &[]));
        tr.record_write(&b);
        tr.slice_left(&b);
        assert!(!tr.is_stale(&new, &[]));
    }

    #[test]
    fn a_slice_relabelled_to_another_service_no_longer_holds_the_old_one() {
        let web = svc("web").build();
        let mut tr = GenerationTracker::new();
        let ours = gen_slice(&web, "a", 3);
        tr.record_write(&ours);
        assert!(tr.is_stale(&web, &[]), "our slice is missing from web's listing");
        let mut moved = ours.clone();
        moved
            .metadata
            .labels
            .get_or_insert_default()
            .insert(crate::keys::LABEL_SERVICE_NAME.to_owned(), "other".to_owned());
        tr.slice_left(&ours);
        assert!(
            !tr.is_stale(&web, &[]),
            "web no longer waits for the slice that left"
        );
        // A write recorded for the slice under its new Service is untouched.
        tr.record_write(&moved);
        tr.slice_left(&ours);
        assert!(tr.has(&moved));
    }
}
