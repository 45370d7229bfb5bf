//! Whether the controllers' loops still make progress, for `/healthz`.
//!
//! Two things can wedge without any error: the dispatcher (the one task that applies watch
//! events to the caches; if it stops, every cache freezes) and a worker inside a sync that its
//! timeout did not end. Both are reported; the kubelet's liveness probe then restarts the pod.
//! An unreachable apiserver is deliberately *not* a liveness failure: a restart cannot fix it,
//! and kube-controller-manager's `/healthz` does not fail on it either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::lock;

/// How often an idle dispatcher beats.
pub(crate) const DISPATCH_BEAT: Duration = Duration::from_secs(5);

/// A dispatcher silent for this long is stuck (12 missed beats).
pub const DISPATCH_LIMIT: Duration = Duration::from_secs(60);

/// Extra time past the sync timeout before a busy worker counts as stuck.
const WORKER_GRACE: Duration = Duration::from_secs(30);

/// A worker by controller and number.
type WorkerId = (&'static str, usize);

/// Heartbeats of the dispatcher and the workers.
#[derive(Debug)]
pub struct Heartbeats {
    dispatcher: Mutex<Instant>,
    /// Per worker: what it syncs and since when; absent while it waits for work.
    busy: Mutex<HashMap<WorkerId, (String, Instant)>>,
    sync_timeout: Duration,
}

impl Heartbeats {
    pub fn new(sync_timeout: Duration) -> Self {
        Heartbeats {
            dispatcher: Mutex::new(Instant::now()),
            busy: Mutex::new(HashMap::new()),
            sync_timeout,
        }
    }

    pub(crate) fn dispatcher_beat(&self) {
        *lock(&self.dispatcher) = Instant::now();
    }

    pub(crate) fn sync_started(&self, controller: &'static str, worker: usize, key: String) {
        lock(&self.busy).insert((controller, worker), (key, Instant::now()));
    }

    pub(crate) fn sync_ended(&self, controller: &'static str, worker: usize) {
        lock(&self.busy).remove(&(controller, worker));
    }

    /// What is stuck now, one line each; empty when all is well.
    pub fn stuck(&self) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        let silent = now.saturating_duration_since(*lock(&self.dispatcher));
        if silent > DISPATCH_LIMIT {
            out.push(format!(
                "the watch dispatcher has not run for {}s (limit {}s): the caches are frozen",
                silent.as_secs(),
                DISPATCH_LIMIT.as_secs()
            ));
        }
        let limit = self.sync_timeout + WORKER_GRACE;
        let mut workers: Vec<String> = lock(&self.busy)
            .iter()
            .filter_map(|((controller, n), (key, since))| {
                let busy = now.saturating_duration_since(*since);
                (busy > limit).then(|| {
                    format!(
                        "{controller} worker {n} has been syncing {key} for {}s (sync timeout {}s)",
                        busy.as_secs(),
                        self.sync_timeout.as_secs()
                    )
                })
            })
            .collect();
        workers.sort();
        out.extend(workers);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_dispatcher_and_an_endless_sync_are_reported() {
        let beats = Heartbeats::new(Duration::from_secs(60));
        assert!(beats.stuck().is_empty());
        beats.sync_started("endpointslice", 0, "default/web".into());
        beats.sync_started("endpoints", 1, "default/db".into());
        tokio::time::advance(Duration::from_secs(59)).await;
        beats.dispatcher_beat();
        beats.sync_ended("endpoints", 1);
        assert!(beats.stuck().is_empty(), "{:?}", beats.stuck());
        tokio::time::advance(Duration::from_secs(32)).await;
        assert_eq!(
            beats.stuck(),
            ["endpointslice worker 0 has been syncing default/web for 91s (sync timeout 60s)"]
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        let stuck = beats.stuck();
        assert_eq!(stuck.len(), 2, "{stuck:?}");
        assert!(
            stuck[0].starts_with("the watch dispatcher has not run for 62s"),
            "{stuck:?}"
        );
        beats.dispatcher_beat();
        beats.sync_ended("endpointslice", 0);
        assert!(beats.stuck().is_empty());
    }
}
