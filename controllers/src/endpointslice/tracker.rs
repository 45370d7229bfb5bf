//! Stale-cache protection: remember the generation of every slice we wrote or deleted, and
//! refuse to reconcile from a cache that has not caught up with those writes.
//!
//! Without this, a sync right after our own write could read the old slice from the informer
//! cache, conclude the endpoints are missing, and create duplicates (or undo the write).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::service_key_for_slice;
use crate::service_predicates::ServiceKey;

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
    /// Names of creates sent whose outcome is unknown (see [`GenerationTracker::name_creates`]).
    pending: Vec<PendingCreate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingCreate {
    name: String,
    /// A later create under this name was refused as existing: the first one landed, and the
    /// cache must show it before the Service is reconciled again.
    landed: bool,
}

/// What became of a create, as far as the caller can tell from its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The apiserver refused it (a 4xx other than 409): nothing was stored.
    Refused,
    /// 409: an object of that name exists: our own earlier create under that name, unless
    /// the cache shows another manager's object holding it.
    Exists {
        /// Whether the cache shows that name held by an object that is not ours.
        foreign: bool,
    },
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

    /// Names the creates of a plan before they are sent: names of earlier creates whose
    /// outcome is unknown first, then fresh ones from `fresh(generateName)`. Each is recorded
    /// as pending until [`record_write`](Self::record_write) or
    /// [`create_failed`](Self::create_failed) settles it.
    ///
    /// A sync can be cut off (timeout, lost lease) after a create was sent but before its
    /// answer came; the create may still land. Sending the next create under the same name
    /// makes the apiserver store at most one of the two, so no duplicate slice can appear.
    /// Pending names the cache already shows among `observed` are settled here: the
    /// reconcile saw those slices and planned around them.
    pub fn name_creates(
        &mut self,
        key: &ServiceKey,
        observed: &[&EndpointSlice],
        creates: &mut [EndpointSlice],
        mut fresh: impl FnMut(&str) -> String,
    ) {
        let entry = self.services.entry(key.clone()).or_default();
        entry.pending.retain(|p| {
            !observed
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(p.name.as_str()))
        });
        let mut reusable = entry.pending.iter().map(|p| p.name.clone());
        let mut named = Vec::with_capacity(creates.len());
        for slice in creates.iter_mut() {
            let name = match reusable.next() {
                Some(name) => name,
                None => fresh(slice.metadata.generate_name.as_deref().unwrap_or_default()),
            };
            slice.metadata.name = Some(name.clone());
            named.push(name);
        }
        drop(reusable);
        for name in named {
            if !entry.pending.iter().any(|p| p.name == name) {
                entry.pending.push(PendingCreate { name, landed: false });
            }
        }
    }

    /// Settles a pending create that did not store `name`: refused, so the name is free
    /// again, or refused as existing, which for a name of ours means an earlier create under
    /// it landed and the cache has yet to show it (the Service is stale until it does). A
    /// name another manager's object holds is dropped, so the next create draws a fresh one.
    pub fn create_failed(&mut self, key: &ServiceKey, name: &str, outcome: CreateOutcome) {
        let Some(entry) = self.services.get_mut(key) else {
            return;
        };
        match outcome {
            CreateOutcome::Exists { foreign: false } => {
                if let Some(p) = entry.pending.iter_mut().find(|p| p.name == name) {
                    p.landed = true;
                }
            }
            CreateOutcome::Refused | CreateOutcome::Exists { foreign: true } => {
                entry.pending.retain(|p| p.name != name);
            }
        }
    }

    /// Records a slice as returned by a successful create or update.
    pub fn record_write(&mut self, written: &EndpointSlice) {
        let (Some(key), Some(id)) = (service_key_for_slice(written), uid(written)) else {
            return;
        };
        let entry = self.services.entry(key).or_default();
        if let Some(name) = written.metadata.name.as_deref() {
            entry.pending.retain(|p| p.name != name);
        }
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
        let ours = matches!(state.slices.remove(id), Some(Expected::Deleted));
        self.forget_if_empty(&key);
        !ours
    }

    /// Drops a Service's record once nothing is left in it: a deleted Service's last slices
    /// going must not leave an entry behind for ever.
    fn forget_if_empty(&mut self, key: &ServiceKey) {
        if self
            .services
            .get(key)
            .is_some_and(|s| s.slices.is_empty() && s.pending.is_empty())
        {
            self.services.remove(key);
        }
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
        self.forget_if_empty(&key);
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
        let landed_unseen = state.pending.iter().any(|p| {
            p.landed
                && !observed
                    .iter()
                    .any(|s| s.metadata.name.as_deref() == Some(p.name.as_str()))
        });
        if landed_unseen {
            return true;
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
impl GenerationTracker {
    /// Every slice recorded, as (`namespace/service`, slice UID), for tests.
    pub(crate) fn recorded(&self) -> std::collections::BTreeSet<(String, String)> {
        self.services
            .iter()
            .flat_map(|(key, s)| s.slices.keys().map(move |id| (key.to_string(), id.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

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

    #[test]
    fn a_create_with_an_unknown_outcome_is_sent_again_under_its_name() {
        let s = svc("web").build();
        let key = ServiceKey::new("default", "web");
        let mut tr = GenerationTracker::new();
        let new_slice = || {
            let mut sl = slice("unused", &s, "m").build();
            sl.metadata.name = None;
            sl.metadata.generate_name = Some("web-".into());
            sl
        };
        let mut n = 0;
        let mut fresh = |prefix: &str| {
            n += 1;
            format!("{prefix}{n}")
        };
        // A sync names two creates; the first is cut off, the second never sent.
        let mut creates = vec![new_slice(), new_slice()];
        tr.name_creates(&key, &[], &mut creates, &mut fresh);
        let names: Vec<_> = creates.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["web-1", "web-2"]);
        assert!(
            !tr.is_stale(&s, &[]),
            "an unknown outcome alone does not hold the Service"
        );
        // The next sync reuses both names, then draws fresh ones.
        let mut again = vec![new_slice(), new_slice(), new_slice()];
        tr.name_creates(&key, &[], &mut again, &mut fresh);
        let names: Vec<_> = again.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["web-1", "web-2", "web-3"]);
        // web-1 succeeds; web-2 exists (the cut-off create landed); web-3 is refused.
        let mut written = gen_slice(&s, "web-1", 1);
        written.metadata.uid = Some("uid-web-1".into());
        tr.record_write(&written);
        tr.create_failed(&key, "web-2", CreateOutcome::Exists { foreign: false });
        tr.create_failed(&key, "web-3", CreateOutcome::Refused);
        assert!(
            tr.is_stale(&s, &[&written]),
            "web-2 landed but the cache does not show it"
        );
        let mut landed = gen_slice(&s, "web-2", 1);
        landed.metadata.uid = Some("uid-web-2".into());
        assert!(!tr.is_stale(&s, &[&written, &landed]));
        // Seen in the cache: settled. web-3 is free: the next create draws a fresh name.
        let mut next = vec![new_slice()];
        tr.name_creates(&key, &[&written, &landed], &mut next, &mut fresh);
        assert_eq!(next[0].metadata.name.as_deref(), Some("web-4"));
        // A name another manager's object holds is dropped too.
        tr.create_failed(&key, "web-4", CreateOutcome::Exists { foreign: true });
        let mut last = vec![new_slice()];
        tr.name_creates(&key, &[&written, &landed], &mut last, &mut fresh);
        assert_eq!(last[0].metadata.name.as_deref(), Some("web-5"));
        // Forgetting the Service forgets its pending names.
        tr.delete_service(&key);
        let mut after = vec![new_slice()];
        tr.name_creates(&key, &[], &mut after, &mut fresh);
        assert_eq!(after[0].metadata.name.as_deref(), Some("web-6"));
    }

    #[test]
    fn a_record_emptied_by_deletions_is_dropped() {
        let s = svc("web").build();
        let key = ServiceKey::new("default", "web");
        let mut tr = GenerationTracker::new();
        let a = gen_slice(&s, "a", 1);
        // A deleted Service's slices: deleted by us, then their deletion events arrive.
        tr.delete_service(&key);
        tr.expect_deletion(&a);
        assert!(tr.services.contains_key(&key));
        assert!(!tr.handle_deletion(&a));
        assert!(
            tr.services.is_empty(),
            "nothing left for a Service nobody syncs again"
        );
        tr.record_write(&a);
        tr.slice_left(&a);
        assert!(tr.services.is_empty());
    }
}
