//! A work queue with client-go's semantics: per-key coalescing, delayed adds that keep the
//! earliest deadline, a key never handed to two workers at once, and per-key exponential
//! backoff.
//!
//! kube-runtime's `Controller` has a scheduler of its own, but its debounce restarts on every
//! trigger (a busy Service could wait forever) and it exposes no queue depth. Upstream's batch
//! period is a delay from the *first* trigger, which is what this queue does.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Exponential per-key backoff: `base * 2^(failures-1)`, capped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// client-go's bucket rate limiter: a token bucket shared by every key of a queue, bounding the
/// overall retry rate (upstream's controllers: 10 per second, bursts of 100).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Tokens per second.
    pub qps: f64,
    /// Bucket size.
    pub burst: u32,
}

/// A bucket's fill, as of `last`.
#[derive(Debug)]
pub(crate) struct Tokens {
    tokens: f64,
    last: Instant,
}

impl Tokens {
    /// A full bucket.
    pub(crate) fn full(bucket: Bucket) -> Self {
        Tokens {
            tokens: f64::from(bucket.burst),
            last: Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait for it (zero when one was there).
    pub(crate) fn reserve(&mut self, bucket: Bucket, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * bucket.qps).min(f64::from(bucket.burst));
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 || bucket.qps <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / bucket.qps)
        }
    }
}

struct Inner<K> {
    ready: VecDeque<K>,
    /// Keys waiting to be processed (in `ready`, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    /// Earliest deadline per delayed key; `timers` may hold stale entries, checked on pop.
    delayed: HashMap<K, Instant>,
    timers: BinaryHeap<std::cmp::Reverse<(Instant, u64, K)>>,
    seq: u64,
    failures: HashMap<K, u32>,
    /// The overall retry limit and its fill, when set.
    overall: Option<(Bucket, Tokens)>,
    shutdown: bool,
}

/// The queue. Cheap to clone; all clones share one queue.
pub struct WorkQueue<K> {
    inner: Arc<Mutex<Inner<K>>>,
    notify: Arc<Notify>,
    backoff: Backoff,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
            backoff: self.backoff,
        }
    }
}

impl<K: Clone + Eq + Hash + Ord + Send + 'static> WorkQueue<K> {
    /// An empty queue whose failed keys come back after `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        WorkQueue {
            inner: Arc::new(Mutex::new(Inner {
                ready: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                delayed: HashMap::new(),
                timers: BinaryHeap::new(),
                seq: 0,
                failures: HashMap::new(),
                overall: None,
                shutdown: false,
            })),
            notify: Arc::new(Notify::new()),
            backoff,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        // A panic while holding the lock leaves consistent data (every method restores the
        // invariants before it could panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now. A key already waiting is not queued twice.
    pub fn add(&self, key: K) {
        let mut q = self.lock();
        if q.shutdown {
            return;
        }
        q.delayed.remove(&key);
        if q.dirty.insert(key.clone()) && !q.processing.contains(&key) {
            q.ready.push_back(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`; a key already waiting, or due sooner, keeps its place.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut q = self.lock();
        if q.shutdown || q.dirty.contains(&key) {
            return;
        }
        let at = Instant::now() + delay;
        if q.delayed.get(&key).is_some_and(|t| *t <= at) {
            return;
        }
        q.delayed.insert(key.clone(), at);
        q.seq += 1;
        let seq = q.seq;
        q.timers.push(std::cmp::Reverse((at, seq, key)));
        drop(q);
        // Wake a waiter so it re-arms its timer for the new, possibly earlier, deadline.
        self.notify.notify_one();
    }

    /// Requeues a key that failed, after its backoff; returns the number of failures so far.
    pub fn add_rate_limited(&self, key: K) -> u32 {
        let (failures, overall) = {
            let mut q = self.lock();
            let f = q.failures.entry(key.clone()).or_insert(0);
            *f = f.saturating_add(1);
            let failures = *f;
            // As client-go's MaxOf limiter: every retry takes a token, and waits for the later
            // of its own backoff and the token.
            let overall = q.overall.as_mut().map_or(Duration::ZERO, |(bucket, tokens)| {
                tokens.reserve(*bucket, Instant::now())
            });
            (failures, overall)
        };
        self.add_after(key, self.backoff.delay(failures).max(overall));
        failures
    }

    /// Also bounds the overall retry rate of [`Self::add_rate_limited`] by `bucket` (full at
    /// first).
    pub fn with_overall_limit(self, bucket: Bucket) -> Self {
        self.lock().overall = Some((bucket, Tokens::full(bucket)));
        self
    }

    /// Clears a key's failure count (after a successful sync).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Number of failures recorded for `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Keys waiting to be processed now (not counting delayed ones): `workqueue_depth`.
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    /// Whether no key is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys scheduled for later.
    pub fn delayed_len(&self) -> usize {
        self.lock().delayed.len()
    }

    /// Waits for the next key; `None` after [`WorkQueue::shutdown`]. The caller must call
    /// [`WorkQueue::done`] with it when finished.
    pub async fn get(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_timer = {
                let mut q = self.lock();
                if q.shutdown {
                    return None;
                }
                promote_due(&mut q, Instant::now());
                if let Some(key) = q.ready.pop_front() {
                    q.dirty.remove(&key);
                    q.processing.insert(key.clone());
                    let more = !q.ready.is_empty();
                    drop(q);
                    if more {
                        // Pass the baton: notify_one wakes one waiter, and there is more work.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                q.timers.peek().map(|std::cmp::Reverse((at, _, _))| *at)
            };
            match next_timer {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` finished; if it was re-added meanwhile it becomes ready again.
    pub fn done(&self, key: &K) {
        let mut q = self.lock();
        q.processing.remove(key);
        if q.dirty.contains(key) {
            q.ready.push_back(key.clone());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Stops the queue: waiting and future `get`s return `None`.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.notify.notify_waiters();
        // notify_waiters does not store a permit; a worker between its check and its wait
        // would miss it, so leave one permit too.
        self.notify.notify_one();
    }
}

fn promote_due<K: Clone + Eq + Hash + Ord>(q: &mut Inner<K>, now: Instant) {
    while let Some(std::cmp::Reverse((at, _, _))) = q.timers.peek() {
        if *at > now {
            break;
        }
        let Some(std::cmp::Reverse((at, _, key))) = q.timers.pop() else {
            break;
        };
        // Only the entry matching the key's current deadline counts; others are superseded.
        if q.delayed.get(&key) != Some(&at) {
            continue;
        }
        q.delayed.remove(&key);
        if q.dirty.insert(key.clone()) && !q.processing.contains(&key) {
            q.ready.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<String> {
        WorkQueue::new(Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    #[tokio::test]
    async fn coalesces_a_burst_into_one_item() {
        let q = queue();
        for _ in 0..100 {
            q.add("ns/web".to_owned());
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await.as_deref(), Some("ns/web"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_is_never_handed_out_twice_at_once() {
        let q = queue();
        q.add("k".to_owned());
        let k = q.get().await.unwrap();
        q.add("k".to_owned()); // re-added while processing: parked, not ready
        assert_eq!(q.len(), 0);
        q.done(&k);
        assert_eq!(q.len(), 1, "comes back once the first run is done");
        assert_eq!(q.get().await.as_deref(), Some("k"));
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_keeps_the_earliest_deadline() {
        let q = queue();
        q.add_after("k".to_owned(), Duration::from_millis(500));
        q.add_after("k".to_owned(), Duration::from_millis(100));
        q.add_after("k".to_owned(), Duration::from_millis(900));
        let start = Instant::now();
        assert_eq!(q.get().await.as_deref(), Some("k"));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        q.done(&"k".to_owned());
        assert_eq!(q.delayed_len(), 0, "superseded deadlines do not fire again");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn batch_period_counts_from_the_first_trigger() {
        // Unlike a debounce, triggers every 50ms do not push the sync past the batch period.
        let q = queue();
        let start = Instant::now();
        let producer = {
            let q = q.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    q.add_after("k".to_owned(), Duration::from_millis(200));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        assert_eq!(q.get().await.as_deref(), Some("k"));
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        producer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_reset() {
        let q = queue();
        let k = "k".to_owned();
        let mut delays = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            q.add_rate_limited(k.clone());
            assert_eq!(q.get().await.as_ref(), Some(&k));
            delays.push(start.elapsed().as_secs());
            q.done(&k);
        }
        assert_eq!(delays, [1, 2, 4, 8, 8]);
        q.forget(&k);
        assert_eq!(q.failures(&k), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_immediate_add_overrides_a_pending_delay() {
        let q = queue();
        q.add_after("k".to_owned(), Duration::from_secs(60));
        q.add("k".to_owned());
        let start = Instant::now();
        assert_eq!(q.get().await.as_deref(), Some("k"));
        assert_eq!(start.elapsed(), Duration::ZERO);
        q.done(&"k".to_owned());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(q.is_empty(), "the cancelled delay does not fire later");
    }

    #[tokio::test]
    async fn several_workers_drain_distinct_keys() {
        let q = queue();
        for i in 0..50 {
            q.add(format!("k{i}"));
        }
        let mut handles = Vec::new();
        for _ in 0..4 {
            let q = q.clone();
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(k)) = tokio::time::timeout(Duration::from_millis(50), q.get()).await {
                    got.push(k.clone());
                    q.done(&k);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 50);
    }

    #[tokio::test]
    async fn shutdown_releases_waiters() {
        let q = queue();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.get().await })
        };
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_share_an_overall_bucket_of_ten_per_second() {
        let q: WorkQueue<String> = WorkQueue::new(Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_secs(1000),
        })
        .with_overall_limit(Bucket {
            qps: 10.0,
            burst: 100,
        });
        // 300 keys fail at once: the first 100 retry after their own 5 ms, the rest wait for
        // tokens at 10 per second, so the last one comes back 20 s later.
        let start = Instant::now();
        for i in 0..300 {
            q.add_rate_limited(format!("k{i:03}"));
        }
        let mut due = Vec::new();
        for _ in 0..300 {
            let k = q.get().await.expect("key");
            due.push((start.elapsed().as_millis(), k.clone()));
            q.done(&k);
        }
        let by_key: std::collections::HashMap<String, u128> = due.into_iter().map(|(t, k)| (k, t)).collect();
        assert_eq!(by_key["k000"], 5);
        assert_eq!(by_key["k099"], 5);
        assert_eq!(by_key["k100"], 100);
        assert_eq!(by_key["k299"], 20_000);
    }
}
