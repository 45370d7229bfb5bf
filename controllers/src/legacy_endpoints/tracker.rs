//! Stale-cache protection for legacy Endpoints: after we replace an object, its old
//! resourceVersion must not be acted upon again.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Endpoints;

use crate::service_predicates::ServiceKey;

/// Remembers, per Endpoints object, the resourceVersion our last write replaced. If the cache
/// still shows that version, it has not seen our write, and a sync based on it could revert
/// the write; the sync must be retried instead.
#[derive(Debug, Clone, Default)]
pub struct StaleEndpointsTracker {
    stale: HashMap<ServiceKey, String>,
}

fn key(e: &Endpoints) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        e.metadata.namespace.clone().unwrap_or_default(),
        e.metadata.name.clone()?,
    ))
}

impl StaleEndpointsTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a successful write: `previous` is the cached object the write replaced
    /// (`None` for a create), `written` the object the apiserver returned. Only a write that
    /// produced a new resourceVersion makes the old one stale.
    pub fn record_write(&mut self, previous: Option<&Endpoints>, written: &Endpoints) {
        let Some(k) = key(written) else { return };
        let old = previous.and_then(|p| p.metadata.resource_version.clone());
        match old {
            Some(old) if written.metadata.resource_version.as_ref() != Some(&old) => {
                self.stale.insert(k, old);
            }
            _ => {}
        }
    }

    /// Whether the cached object is one our own write has already replaced.
    pub fn is_stale(&self, cached: &Endpoints) -> bool {
        let Some(k) = key(cached) else { return false };
        match (self.stale.get(&k), cached.metadata.resource_version.as_ref()) {
            (Some(stale), Some(rv)) => stale == rv,
            _ => false,
        }
    }

    /// Forgets an object (call when its Service is deleted).
    pub fn delete(&mut self, key: &ServiceKey) {
        self.stale.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(rv: &str) -> Endpoints {
        let mut e = Endpoints::default();
        e.metadata.name = Some("web".into());
        e.metadata.namespace = Some("default".into());
        e.metadata.resource_version = Some(rv.into());
        e
    }

    #[test]
    fn stale_after_write_until_cache_catches_up() {
        let mut tr = StaleEndpointsTracker::new();
        assert!(!tr.is_stale(&ep("1")));
        tr.record_write(Some(&ep("1")), &ep("2"));
        assert!(tr.is_stale(&ep("1")));
        assert!(!tr.is_stale(&ep("2")));
        tr.record_write(Some(&ep("2")), &ep("2"));
        assert!(tr.is_stale(&ep("1")), "a no-op write keeps the previous record");
        tr.delete(&ServiceKey::new("default", "web"));
        assert!(!tr.is_stale(&ep("1")));
        tr.record_write(None, &ep("5"));
        assert!(!tr.is_stale(&ep("5")));
    }
}
