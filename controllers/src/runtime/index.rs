//! A by-namespace index over a reflector store, upstream's namespace indexer.
//!
//! A Service selects pods of its own namespace only, and a pod event concerns Services of its
//! namespace only; scanning the whole store for either makes every sync O(cluster). The index
//! holds the store's own `Arc`s (no copies), and is kept by the dispatcher in the same step as
//! the store: an event is applied to the store, then mirrored here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// Objects by namespace, then name.
pub(crate) struct ByNamespace<K> {
    map: RwLock<HashMap<String, HashMap<String, Arc<K>>>>,
    /// True once the first list is in. The store says it is ready a moment before the index
    /// has been rebuilt from it, so readers of the index wait for this instead.
    ready: tokio::sync::watch::Sender<bool>,
}

impl<K> Default for ByNamespace<K> {
    fn default() -> Self {
        ByNamespace {
            map: RwLock::new(HashMap::new()),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl<K> ByNamespace<K> {
    /// Resolves once the index holds the first complete list.
    pub(crate) async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        // Err: the sender is gone, i.e. so is the index; nothing to wait for.
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl<K> ByNamespace<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Mirrors `e`, already applied to `store`: an upsert takes the store's `Arc`; the end of a
    /// relist (which swapped the whole store) rebuilds from it.
    pub(crate) fn apply(&self, store: &Store<K>, e: &Event<K>) {
        match e {
            Event::Apply(obj) => match store.get(&ObjectRef::from_obj(obj)) {
                Some(stored) => self.upsert(stored),
                None => self.remove(obj),
            },
            Event::Delete(obj) => self.remove(obj),
            Event::InitDone => self.rebuild(store.state()),
            // A relist is buffered by the store until InitDone; so is it here.
            Event::Init | Event::InitApply(_) => {}
        }
    }

    /// The objects of namespace `ns` that `keep` accepts.
    pub(crate) fn filter(&self, ns: &str, mut keep: impl FnMut(&K) -> bool) -> Vec<Arc<K>> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(ns)
            .map(|objs| objs.values().filter(|o| keep(o)).cloned().collect())
            .unwrap_or_default()
    }

    fn upsert(&self, obj: Arc<K>) {
        let (ns, name) = key(obj.as_ref());
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(ns).or_default().insert(name, obj);
    }

    fn remove(&self, obj: &K) {
        let (ns, name) = key(obj);
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(objs) = map.get_mut(&ns) {
            objs.remove(&name);
            if objs.is_empty() {
                map.remove(&ns);
            }
        }
    }

    fn rebuild(&self, all: Vec<Arc<K>>) {
        let mut fresh: HashMap<String, HashMap<String, Arc<K>>> = HashMap::new();
        for obj in all {
            let (ns, name) = key(obj.as_ref());
            fresh.entry(ns).or_default().insert(name, obj);
        }
        *self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        self.ready.send_replace(true);
    }
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector;

    fn pod(ns: &str, name: &str, app: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
        p
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    }

    #[test]
    fn mirrors_the_store_through_events_and_relists() {
        let (store, mut writer) = reflector::store::<Pod>();
        let index = ByNamespace::default();
        let mut apply = |e: Event<Pod>| {
            writer.apply_watcher_event(&e);
            index.apply(&store, &e);
        };
        apply(Event::Init);
        apply(Event::InitApply(pod("a", "p1", "web")));
        apply(Event::InitApply(pod("b", "p2", "web")));
        assert!(index.filter("a", |_| true).is_empty(), "buffered until InitDone");
        assert!(!*index.ready.borrow(), "not ready before the first list is in");
        apply(Event::InitDone);
        assert!(*index.ready.borrow());
        assert_eq!(names(index.filter("a", |_| true)), ["p1"]);
        apply(Event::Apply(pod("a", "p3", "db")));
        apply(Event::Apply(pod("a", "p1", "db")));
        let app = |p: &Pod| p.metadata.labels.as_ref().unwrap()["app"].clone();
        assert_eq!(names(index.filter("a", |p| app(p) == "db")), ["p1", "p3"]);
        let shared = index.filter("a", |p| p.metadata.name.as_deref() == Some("p3"));
        let stored = store.get(&ObjectRef::new("p3").within("a")).unwrap();
        assert!(Arc::ptr_eq(&shared[0], &stored), "the store's Arc, not a copy");
        apply(Event::Delete(pod("a", "p1", "db")));
        assert_eq!(names(index.filter("a", |_| true)), ["p3"]);

        // A relist that misses p3 (deleted while the watch was down) drops it here too.
        apply(Event::Init);
        apply(Event::InitApply(pod("b", "p2", "web")));
        assert_eq!(
            names(index.filter("a", |_| true)),
            ["p3"],
            "old view until InitDone"
        );
        apply(Event::InitDone);
        assert!(index.filter("a", |_| true).is_empty());
        assert_eq!(names(index.filter("b", |_| true)), ["p2"]);
        assert_eq!(store.state().len(), 1);
    }
}
