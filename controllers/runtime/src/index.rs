//! A by-namespace index over a reflector store (upstream's namespace indexer), with a label
//! index beside it.
//!
//! A Service selects pods of its own namespace only, and a pod event concerns Services of its
//! namespace only; scanning the whole store for either makes every sync O(cluster). The index
//! holds the store's own `Arc`s (no copies), and is kept by the dispatcher in the same step as
//! the store: an event is applied to the store, then mirrored here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// Objects by namespace, then name; and their names by namespace, label key and label value,
/// so that a Service's sync reads the pods its selector names instead of its whole namespace
/// (upstream lists the namespace and filters: O(namespace) per sync).
pub(crate) struct ByNamespace<K> {
    inner: RwLock<Inner<K>>,
    /// True once the first list is in. The store says it is ready a moment before the index
    /// has been rebuilt from it, so readers of the index wait for this instead.
    ready: tokio::sync::watch::Sender<bool>,
}

/// namespace -> label key -> label value -> names.
type LabelIndex = HashMap<String, HashMap<String, HashMap<String, HashSet<String>>>>;

struct Inner<K> {
    objs: HashMap<String, HashMap<String, Arc<K>>>,
    labels: LabelIndex,
}

impl<K> Default for ByNamespace<K> {
    fn default() -> Self {
        ByNamespace {
            inner: RwLock::new(Inner {
                objs: HashMap::new(),
                labels: HashMap::new(),
            }),
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
        let inner = self.read();
        inner
            .objs
            .get(ns)
            .map(|objs| objs.values().filter(|o| keep(o)).cloned().collect())
            .unwrap_or_default()
    }

    /// The objects of namespace `ns` carrying every label of `selector`: read from the label
    /// index, so the cost is that of the smallest set of objects one of the selector's labels
    /// names. An empty selector names every object of the namespace.
    pub(crate) fn select(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<Arc<K>> {
        if selector.is_empty() {
            return self.filter(ns, |_| true);
        }
        let inner = self.read();
        let (Some(by_key), Some(objs)) = (inner.labels.get(ns), inner.objs.get(ns)) else {
            return Vec::new();
        };
        let sets: Option<Vec<&HashSet<String>>> = selector
            .iter()
            .map(|(k, v)| by_key.get(k).and_then(|by_value| by_value.get(v)))
            .collect();
        let Some(smallest) = sets.and_then(|s| s.into_iter().min_by_key(|names| names.len())) else {
            return Vec::new();
        };
        smallest
            .iter()
            .filter_map(|name| objs.get(name))
            .filter(|o| {
                kube::Resource::meta(o.as_ref())
                    .labels
                    .as_ref()
                    .is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
            })
            .cloned()
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<K>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<K>> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn upsert(&self, obj: Arc<K>) {
        let (ns, name) = key(obj.as_ref());
        let mut inner = self.write();
        let Inner { objs, labels } = &mut *inner;
        let old = objs.get(&ns).and_then(|m| m.get(&name)).cloned();
        let new_labels = obj.meta().labels.as_ref();
        // Status updates, most events, leave the labels alone: nothing to re-index.
        if old.as_ref().map(|o| o.meta().labels.as_ref()) != Some(new_labels) {
            if let Some(old) = &old {
                unindex(labels, &ns, &name, old.meta().labels.as_ref());
            }
            index(labels, &ns, &name, new_labels);
        }
        objs.entry(ns).or_default().insert(name, obj);
    }

    fn remove(&self, obj: &K) {
        let (ns, name) = key(obj);
        let mut inner = self.write();
        let Inner { objs, labels } = &mut *inner;
        if let Some(m) = objs.get_mut(&ns) {
            if let Some(old) = m.remove(&name) {
                unindex(labels, &ns, &name, old.meta().labels.as_ref());
            }
            if m.is_empty() {
                objs.remove(&ns);
            }
        }
    }

    fn rebuild(&self, all: Vec<Arc<K>>) {
        let mut objs: HashMap<String, HashMap<String, Arc<K>>> = HashMap::new();
        let mut labels = LabelIndex::new();
        for obj in all {
            let (ns, name) = key(obj.as_ref());
            index(&mut labels, &ns, &name, obj.meta().labels.as_ref());
            objs.entry(ns).or_default().insert(name, obj);
        }
        *self.write() = Inner { objs, labels };
        self.ready.send_replace(true);
    }
}

fn index(idx: &mut LabelIndex, ns: &str, name: &str, labels: Option<&BTreeMap<String, String>>) {
    let Some(labels) = labels.filter(|l| !l.is_empty()) else {
        return;
    };
    let by_key = idx.entry(ns.to_owned()).or_default();
    for (k, v) in labels {
        by_key
            .entry(k.clone())
            .or_default()
            .entry(v.clone())
            .or_default()
            .insert(name.to_owned());
    }
}

fn unindex(idx: &mut LabelIndex, ns: &str, name: &str, labels: Option<&BTreeMap<String, String>>) {
    let (Some(labels), Some(by_key)) = (labels, idx.get_mut(ns)) else {
        return;
    };
    for (k, v) in labels {
        let Some(by_value) = by_key.get_mut(k) else {
            continue;
        };
        if let Some(names) = by_value.get_mut(v) {
            names.remove(name);
            if names.is_empty() {
                by_value.remove(v);
            }
        }
        if by_value.is_empty() {
            by_key.remove(k);
        }
    }
    if by_key.is_empty() {
        idx.remove(ns);
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
        let db: BTreeMap<String, String> = [("app".to_owned(), "db".to_owned())].into();
        assert_eq!(names(index.select("a", &db)), ["p1", "p3"]);
        assert!(index.select("b", &db).is_empty());
        let web: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        assert!(
            index.select("a", &web).is_empty(),
            "p1's old label is no longer indexed"
        );
        let two = [
            ("app".to_owned(), "db".to_owned()),
            ("tier".to_owned(), "x".to_owned()),
        ]
        .into();
        assert!(index.select("a", &two).is_empty(), "every label must match");
        apply(Event::Delete(pod("a", "p1", "db")));
        assert_eq!(names(index.filter("a", |_| true)), ["p3"]);
        assert_eq!(names(index.select("a", &db)), ["p3"]);

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
