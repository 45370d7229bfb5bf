//! Where a range's state lives and how jobs run against it: the [`ClaimStore`] seam.
//!
//! [`ObjectStore`] is production: one writer task per range and process, owning the
//! [`RangeState`]. Callers send it jobs (closures over the state); the writer takes every job
//! waiting, runs them in order and, if the shared part (claims, cursors) changed, writes it once
//! with `PUT` + the cached `resourceVersion`. A 409 means another replica wrote first: the
//! writer re-reads the claims, re-runs the same jobs and tries again (bounded, with jitter).
//! Results are handed back only after a successful write, so a caller never sees a value that is
//! not shared. Holdings from the watches arrive as *observations*: applied once, never written.
//!
//! [`MemoryStore`] runs the same jobs on a state behind a mutex: the table tests drive the
//! production decision flow ([`ServiceAllocator::decide`](super::ServiceAllocator::decide))
//! through it.
//!
//! The object is disposable: deleted, it is recreated from the writer's state
//! (`RangeAllocationRecreated`); unreadable, it is overwritten with it
//! (`RangeAllocationRewritten`). A Warning Event on the object and `status.lastRecovery` say so. Either
//! way the holdings, which decide what is used, come from the watches and are not lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::allocation_metrics::AllocationMetrics;
use super::crd::{self, RangeAllocation, RangeAllocationStatus, Recovery};
use super::range_state::{Pool, RangeState};

/// Most jobs run in one write.
const MAX_BATCH: usize = 256;

/// How often an idle writer expires claims and writes the end of lingers.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Under load, how often the status (counters) is written when nothing urgent changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Why a store operation failed. Cloneable: one failure may end a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RangeAllocation {object}: {reason}")]
pub struct StoreFailure {
    /// The object's name.
    pub object: String,
    /// What went wrong.
    pub reason: String,
}

/// A job: runs on the state, possibly several times (once per write attempt).
pub type Job<P> = Box<dyn FnMut(&mut RangeState<P>) + Send>;

/// How a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the state; what it changes in the shared part is written before it returns.
    Write,
    /// On a copy of freshly read state; nothing is written (dry runs).
    DryRun,
    /// On the state as this process has it, through [`Range::read`] (a shared reference, so
    /// it cannot change anything); nothing is written.
    Read,
}

/// Where one range's state lives. Implementations serialize jobs.
pub trait ClaimStore<P: Pool>: Send + Sync + std::fmt::Debug {
    /// The object's name (or a label for an in-memory store).
    fn name(&self) -> &str;
    /// Runs `job` as `mode` says; resolves once it ran (and, for [`Mode::Write`], was written).
    fn run(&self, job: Job<P>, mode: Mode) -> BoxFuture<'_, Result<(), StoreFailure>>;
    /// Applies what the watches saw (holdings, ranges): once, never written, not waited for.
    /// It may take effect before jobs submitted earlier that are still queued (a value held or
    /// freed a moment sooner).
    fn observe(&self, change: Job<P>);
}

/// A shared handle to a range's store with typed helpers.
pub struct Range<P: Pool> {
    store: Arc<dyn ClaimStore<P>>,
}

impl<P: Pool> Clone for Range<P> {
    fn clone(&self) -> Self {
        Range {
            store: Arc::clone(&self.store),
        }
    }
}

impl<P: Pool> std::fmt::Debug for Range<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.store.fmt(f)
    }
}

impl<P: Pool> Range<P> {
    /// Wraps a store.
    pub fn new(store: impl ClaimStore<P> + 'static) -> Self {
        Range {
            store: Arc::new(store),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.store.name()
    }

    /// Runs `f` on the state and shares what it changed. `f` may run several times and must
    /// leave the state unchanged when it refuses.
    pub async fn update<R, F>(&self, f: F) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&mut RangeState<P>) -> R + Send + 'static,
    {
        self.submit(f, Mode::Write).await
    }

    /// Runs `f` on a copy of freshly read state; nothing is written.
    pub async fn dry_run<R, F>(&self, f: F) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&mut RangeState<P>) -> R + Send + 'static,
    {
        self.submit(f, Mode::DryRun).await
    }

    /// Runs `f` on the state as this process has it; nothing is changed or written.
    pub async fn read<R, F>(&self, mut f: F) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&RangeState<P>) -> R + Send + 'static,
    {
        self.submit(move |s: &mut RangeState<P>| f(s), Mode::Read).await
    }

    /// A copy of the state as this process has it.
    pub async fn snapshot(&self) -> Result<RangeState<P>, StoreFailure> {
        self.read(RangeState::clone).await
    }

    /// Applies a change seen by the watches (see [`ClaimStore::observe`]).
    pub fn observe(&self, change: impl FnMut(&mut RangeState<P>) + Send + 'static) {
        self.store.observe(Box::new(change));
    }

    async fn submit<R, F>(&self, mut f: F, mode: Mode) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&mut RangeState<P>) -> R + Send + 'static,
    {
        let slot: Arc<Mutex<Option<R>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let job: Job<P> = Box::new(move |state: &mut RangeState<P>| {
            let r = f(state);
            if let Ok(mut s) = out.lock() {
                *s = Some(r);
            }
        });
        self.store.run(job, mode).await?;
        let result = slot.lock().ok().and_then(|mut s| s.take());
        result.ok_or_else(|| StoreFailure {
            object: self.name().to_owned(),
            reason: "the job did not run".to_owned(),
        })
    }
}

/// A range held in memory: the same jobs, no sharing.
pub struct MemoryStore<P: Pool> {
    name: String,
    state: Mutex<RangeState<P>>,
}

impl<P: Pool> std::fmt::Debug for MemoryStore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("name", &self.name).finish()
    }
}

impl<P: Pool> MemoryStore<P> {
    /// An empty state over `pool`.
    pub fn new(name: impl Into<String>, pool: P) -> Self {
        MemoryStore {
            name: name.into(),
            state: Mutex::new(RangeState::new(pool)),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut RangeState<P>) -> R) -> Result<R, StoreFailure> {
        let mut state = self.state.lock().map_err(|_| StoreFailure {
            object: self.name.clone(),
            reason: "state lock poisoned".to_owned(),
        })?;
        Ok(f(&mut state))
    }
}

impl<P: Pool> ClaimStore<P> for MemoryStore<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, mut job: Job<P>, mode: Mode) -> BoxFuture<'_, Result<(), StoreFailure>> {
        let result = self.with_state(|state| {
            state.expire(Timestamp::now());
            match mode {
                Mode::Write => {
                    job(state);
                    state.clear_dirty();
                }
                Mode::Read => job(state),
                Mode::DryRun => job(&mut state.clone()),
            }
        });
        Box::pin(async move { result })
    }

    fn observe(&self, mut change: Job<P>) {
        let _ = self.with_state(|state| change(state));
    }
}

/// A job waiting in a batch, with where its outcome goes.
type Queued<P> = (Job<P>, Mode, oneshot::Sender<Result<(), StoreFailure>>);

enum Message<P: Pool> {
    Job {
        run: Job<P>,
        mode: Mode,
        done: oneshot::Sender<Result<(), StoreFailure>>,
    },
    Observe(Job<P>),
    /// A version of the object the watch saw (usually another replica's write).
    Written(Box<RangeAllocation>),
}

/// A range shared through its `RangeAllocation` object (see the module docs).
pub struct ObjectStore<P: Pool> {
    name: String,
    tx: mpsc::UnboundedSender<Message<P>>,
    _watch: AbortOnDrop,
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<P: Pool> std::fmt::Debug for ObjectStore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore").field("name", &self.name).finish()
    }
}

impl<P: Pool> ClaimStore<P> for ObjectStore<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, job: Job<P>, mode: Mode) -> BoxFuture<'_, Result<(), StoreFailure>> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Message::Job { run: job, mode, done });
        Box::pin(async move {
            let closed = || StoreFailure {
                object: self.name.clone(),
                reason: "the store's writer task has stopped".to_owned(),
            };
            sent.map_err(|_| closed())?;
            wait.await.map_err(|_| closed())?
        })
    }

    fn observe(&self, change: Job<P>) {
        let _ = self.tx.send(Message::Observe(change));
    }
}

impl<P: Pool> ObjectStore<P> {
    /// Opens the object `name` for `state` (empty, with its pool and reservations): reads its claims and cursors (creating it when absent)
    /// and spawns the writer task on the current Tokio runtime. The claims are values, valid
    /// whatever the ranges, so an object written under another configuration is simply read.
    pub async fn open(
        client: Client,
        name: impl Into<String>,
        state: RangeState<P>,
        max_attempts: u32,
        metrics: Option<AllocationMetrics>,
    ) -> Result<Self, StoreFailure> {
        let name = name.into();
        let range = state.pool().range_string();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "portico-allocation".to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let mut writer = Writer {
            api: Api::all(client),
            name: name.clone(),
            max_attempts: max_attempts.max(1),
            metrics,
            recorder,
            state,
            rv: None,
            uid: None,
            recovery: None,
            stored_status: None,
            status_written: None,
            status_retry_at: None,
        };
        writer.load(true).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Another replica's write reaches this one through a watch of the object, so its next
        // write usually carries the current resourceVersion instead of losing a
        // compare-and-swap (and a GET) to every write of the other.
        let watch = tokio::spawn(watch_object(writer.api.clone(), name.clone(), tx.downgrade()));
        let span = tracing::info_span!("range_store", object = %name, range = %range);
        tokio::spawn(writer.run(rx).instrument(span));
        Ok(ObjectStore {
            name,
            tx,
            _watch: AbortOnDrop(watch),
        })
    }
}

async fn watch_object<P: Pool>(
    api: Api<RangeAllocation>,
    name: String,
    tx: mpsc::WeakUnboundedSender<Message<P>>,
) {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj))) => {
                let Some(tx) = tx.upgrade() else { return };
                if tx.send(Message::Written(Box::new(obj))).is_err() {
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            // Undecodable versions are the writer's to recover from, at its next read; anything
            // else (RBAC: `list, watch` on rangeallocations) costs every write a lost
            // compare-and-swap, so it is said loudly.
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "RangeAllocation watch failed; retrying with backoff")
            }
        }
    }
}

fn is_status(e: &kube::Error, pred: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if pred(s))
}

struct Writer<P: Pool> {
    api: Api<RangeAllocation>,
    name: String,
    max_attempts: u32,
    metrics: Option<AllocationMetrics>,
    recorder: Recorder,
    state: RangeState<P>,
    /// `None`: the object must be read before the next write.
    rv: Option<String>,
    /// The object's identity as last read: another one means it was deleted and recreated.
    uid: Option<String>,
    /// The last time the object had to be rebuilt from this replica's state.
    recovery: Option<Recovery>,
    /// The status as last read or written (`None`: unknown, write it).
    stored_status: Option<RangeAllocationStatus>,
    /// When this writer last wrote the status.
    status_written: Option<tokio::time::Instant>,
    /// After a failed status write: not before then.
    status_retry_at: Option<tokio::time::Instant>,
}

impl<P: Pool> Writer<P> {
    /// The status this replica's state calls for.
    fn status(&self) -> RangeAllocationStatus {
        let mut status = crd::status_of(&self.state);
        status.last_recovery = self.recovery.clone();
        status.with_conditions(self.stored_status.as_ref(), Timestamp::now())
    }

    /// Takes the stored recovery record when it is newer than this replica's: replicas must
    /// agree on it, or each would rewrite the status over the other's for ever.
    fn adopt_recovery(&mut self, stored: Option<&RangeAllocationStatus>) {
        let Some(theirs) = stored.and_then(|s| s.last_recovery.as_ref()) else {
            return;
        };
        if self.recovery.as_ref().is_none_or(|mine| mine.time < theirs.time) {
            self.recovery = Some(theirs.clone());
        }
    }

    /// Writes the status subresource when it differs from the stored one: at once when that
    /// cannot wait (a condition flips, a repair report or recovery), otherwise at most every
    /// [`STATUS_INTERVAL`], so replicas whose counters differ (a rollout changing ranges) do
    /// not take turns rewriting it. A failed write waits [`STATUS_INTERVAL`] too.
    async fn write_status(&mut self) {
        let Some(rv) = self.rv.clone() else { return };
        let status = self.status();
        if self.stored_status.as_ref() == Some(&status) {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.status_retry_at.is_some_and(|at| now < at) {
            return;
        }
        let due = self
            .status_written
            .is_none_or(|at| at.elapsed() >= STATUS_INTERVAL);
        if !(due || status.is_urgent_over(self.stored_status.as_ref())) {
            return;
        }
        let mut obj = self.object(Some(rv));
        obj.status = Some(status);
        self.status_written = Some(tokio::time::Instant::now());
        match self
            .api
            .replace_status(&self.name, &PostParams::default(), &obj)
            .await
        {
            Ok(written) => {
                self.status_retry_at = None;
                self.seen(&written);
                if let Some(m) = &self.metrics {
                    m.status_write(P::KIND, &self.name);
                }
            }
            Err(e) => {
                self.status_retry_at = Some(now + STATUS_INTERVAL);
                if is_status(&e, |s| s.is_conflict()) {
                    tracing::debug!(error = %e, "status write lost a race; retried");
                } else if is_status(&e, |s| s.is_not_found()) {
                    tracing::warn!(
                        "the RangeAllocation CRD has no status subresource (an older CRD): update it \
                         with `portico crds | kubectl apply -f -`; counters and conditions are not written"
                    );
                } else {
                    tracing::warn!(error = %e, "RangeAllocation status not written; retried in {STATUS_INTERVAL:?}");
                }
            }
        }
    }

    fn fail(&self, reason: impl std::fmt::Display) -> StoreFailure {
        StoreFailure {
            object: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    fn object(&self, resource_version: Option<String>) -> RangeAllocation {
        let (spec, mut status) = crd::encode(&self.state);
        status.last_recovery = self.recovery.clone();
        RangeAllocation {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version,
                labels: Some([("app.kubernetes.io/managed-by".to_owned(), "portico".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec,
            status: Some(status),
        }
    }

    fn remember(&mut self, written: &RangeAllocation) {
        self.rv = written.resource_version();
        self.uid = written.uid();
        if let Some(m) = &self.metrics {
            m.observe(&self.state);
            m.write(P::KIND, &self.name);
        }
    }

    /// Reads the object's claims into the state. Absent: created from the state. Unreadable, or
    /// recreated by someone else since the last read: the claims this process holds are kept
    /// (merged in) and written back, and the recovery is reported.
    async fn load(&mut self, opening: bool) -> Result<(), StoreFailure> {
        for _ in 0..self.max_attempts {
            let now = Timestamp::now();
            match self.api.get_opt(&self.name).await {
                Ok(Some(obj)) => {
                    let stored = crd::decode::<P::Value>(&obj);
                    let recreated = !opening && self.uid.is_some() && obj.uid() != self.uid;
                    if opening {
                        self.state.set_cursors(&stored.cursors);
                        self.recovery = obj.status.as_ref().and_then(|s| s.last_recovery.clone());
                    }
                    self.state.set_last_repair(stored.last_repair);
                    self.stored_status.clone_from(&obj.status);
                    self.adopt_recovery(obj.status.as_ref());
                    if recreated || !stored.unreadable.is_empty() {
                        let reason = if recreated {
                            "the object was deleted and recreated by someone else".to_owned()
                        } else {
                            format!("unreadable claims: {}", stored.unreadable.join("; "))
                        };
                        let mut merged = self.state.stored_claims();
                        merged.extend(stored.claims);
                        self.state.replace_claims(merged, now);
                        self.state.touch();
                        self.recovered(&obj, reason).await;
                    } else {
                        self.state.replace_claims(stored.claims, now);
                    }
                    self.rv = obj.resource_version();
                    self.uid = obj.uid();
                    return Ok(());
                }
                Ok(None) => {
                    let obj = self.object(None);
                    match self.api.create(&PostParams::default(), &obj).await {
                        Ok(created) => {
                            if self.uid.is_some() {
                                self.recovered(&created, "the object was deleted".to_owned())
                                    .await;
                            } else {
                                tracing::info!(object = %self.name, "created the RangeAllocation object");
                            }
                            self.remember(&created);
                            return Ok(());
                        }
                        Err(e) if is_status(&e, |s| s.is_already_exists()) => continue,
                        // The CRD was just installed and is not served yet.
                        Err(e) if is_status(&e, |s| s.is_not_found()) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                // The object does not even decode (a field of the wrong type): overwrite it.
                Err(kube::Error::SerdeError(e)) => {
                    let mut meta = self
                        .api
                        .get_metadata(&self.name)
                        .await
                        .map_err(|e| self.fail(e))?;
                    // The status is a subresource the spec write leaves alone: overwrite it
                    // first (its answer may not decode either), then write the spec over the
                    // version that left.
                    let fresh = self.object(meta.resource_version());
                    let _ = self
                        .api
                        .replace_status(&self.name, &PostParams::default(), &fresh)
                        .await;
                    meta = self
                        .api
                        .get_metadata(&self.name)
                        .await
                        .map_err(|e| self.fail(e))?;
                    self.stored_status = None;
                    self.rv = meta.resource_version();
                    self.uid = meta.uid();
                    self.state.touch();
                    self.recovery = Some(Recovery {
                        time: now.to_string(),
                        reason: format!(
                            "the object did not decode ({e}); rewritten from this replica's state"
                        ),
                    });
                    tracing::warn!(object = %self.name, error = %e, "RangeAllocation does not decode: rewriting it");
                    self.count_recovery("corrupt");
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "RangeAllocationRewritten".to_owned(),
                        note: Some(format!(
                            "the object did not decode ({e}); rewritten from this replica's state"
                        )),
                        action: "Recover".to_owned(),
                        secondary: None,
                    };
                    if let Err(e) = self.recorder.publish(&event, &meta.object_ref(&())).await {
                        tracing::debug!(error = %e, "could not publish the recovery Event");
                    }
                    return Ok(());
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(self.fail("could not read or create the object"))
    }

    fn count_recovery(&self, why: &str) {
        if let Some(m) = &self.metrics {
            m.recovery(P::KIND, &self.name, why);
        }
    }

    async fn recovered(&mut self, obj: &RangeAllocation, reason: String) {
        tracing::warn!(object = %self.name, %reason, "RangeAllocation recovered from this replica's state");
        let corrupt = reason.starts_with("unreadable");
        self.count_recovery(if corrupt { "corrupt" } else { "deleted" });
        self.recovery = Some(Recovery {
            time: Timestamp::now().to_string(),
            reason: reason.clone(),
        });
        let event = Event {
            type_: EventType::Warning,
            reason: if corrupt {
                "RangeAllocationRewritten"
            } else {
                "RangeAllocationRecreated"
            }
            .to_owned(),
            note: Some(format!(
                "{reason}; the claims this replica holds were written back (what is used comes from the watches and was not lost)"
            )),
            action: "Recover".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, "could not publish the recovery Event");
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message<P>>) {
        loop {
            // Idle, the writer still wakes up now and then: claims lapse and lingers end (a
            // change to write) without any request coming in.
            let first = match tokio::time::timeout(IDLE_TICK, rx.recv()).await {
                Ok(Some(first)) => Some(first),
                Ok(None) => return,
                Err(_) => None,
            };
            let idle = first.is_none();
            let mut batch = Vec::new();
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    Message::Observe(mut change) => change(&mut self.state),
                    Message::Written(obj) => self.seen(&obj),
                    Message::Job { run, mode, done } => batch.push((run, mode, done)),
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            // Idle (nothing for a tick, not merely no job among watch events): write the end of
            // lingers; busy, the next write carries it anyway.
            if idle {
                self.state.expire(Timestamp::now());
                if self.state.take_linger_ended() {
                    self.state.touch();
                }
            }
            if !batch.is_empty() || self.state.is_dirty() {
                let result = self.process(&mut batch).await;
                for (_, _, done) in batch {
                    let _ = done.send(result.clone());
                }
            }
            self.write_status().await;
            if let Some(m) = &self.metrics {
                m.observe(&self.state);
            }
        }
    }

    /// A version of the object from the watch: taken when newer than the one this writer holds
    /// (resourceVersions compared as numbers, as etcd issues them; anything else only when it
    /// differs). Unreadable or recreated objects are left to the next read, which recovers them.
    fn seen(&mut self, obj: &RangeAllocation) {
        let Some(rv) = obj.resource_version() else { return };
        let newer = match (self.rv.as_deref().map(str::parse::<u64>), rv.parse::<u64>()) {
            (Some(Ok(mine)), Ok(theirs)) => theirs > mine,
            (Some(_), _) => self.rv.as_deref() != Some(rv.as_str()),
            (None, _) => false,
        };
        if !newer {
            return;
        }
        let stored = crd::decode::<P::Value>(obj);
        if !stored.unreadable.is_empty() || obj.uid() != self.uid {
            self.rv = None;
            return;
        }
        self.state.replace_claims(stored.claims, Timestamp::now());
        self.state.set_last_repair(stored.last_repair);
        self.stored_status.clone_from(&obj.status);
        self.adopt_recovery(obj.status.as_ref());
        self.rv = Some(rv);
    }

    async fn process(&mut self, batch: &mut [Queued<P>]) -> Result<(), StoreFailure> {
        self.state.expire(Timestamp::now());
        // The claims before this batch: a retry starts again from them (then from whatever the
        // object holds), so a job that claims a next-free value never claims twice. A snapshot
        // copies nothing until a job changes a claim: most batches hand out reserved values,
        // change none and are not written.
        let baseline = self.state.snapshot_claims();
        let reserve = self.state.save_reservations();
        let mut refresh = self.rv.is_none() || batch.iter().any(|(_, m, _)| *m == Mode::DryRun);
        for attempt in 1..=self.max_attempts {
            if attempt > 1 {
                self.state
                    .replace_claims(baseline.stored_claims(), Timestamp::now());
                self.state.restore_reservations(reserve.clone());
            }
            if refresh {
                self.load(false).await?;
            }
            for (job, mode, _) in batch.iter_mut() {
                match mode {
                    Mode::Write => job(&mut self.state),
                    Mode::Read => job(&mut self.state),
                    Mode::DryRun => job(&mut self.state.clone()),
                }
            }
            if !self.state.is_dirty() {
                return Ok(());
            }
            let write = match self.rv.clone() {
                Some(rv) => {
                    let obj = self.object(Some(rv));
                    self.api.replace(&self.name, &PostParams::default(), &obj).await
                }
                None => {
                    let obj = self.object(None);
                    self.api.create(&PostParams::default(), &obj).await
                }
            };
            match write {
                Ok(written) => {
                    self.state.clear_dirty();
                    self.remember(&written);
                    return Ok(());
                }
                Err(e)
                    if is_status(&e, |s| {
                        s.is_conflict() || s.is_not_found() || s.is_already_exists()
                    }) =>
                {
                    if let Some(m) = &self.metrics {
                        m.conflict(P::KIND, &self.name);
                    }
                    tracing::debug!(attempt, "lost a write race, re-reading");
                    // Re-reading replaces the claims with the stored ones, which undoes this
                    // attempt's unwritten claims before the jobs run again.
                    refresh = true;
                    let jitter = rand::rng().random_range(0..=5 * u64::from(attempt.min(20)));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => {
                    // The write may or may not have happened: forget this batch's claims and
                    // re-read before the next write.
                    self.state
                        .replace_claims(baseline.stored_claims(), Timestamp::now());
                    self.state.restore_reservations(reserve);
                    self.state.clear_dirty();
                    self.rv = None;
                    return Err(self.fail(e));
                }
            }
        }
        self.state
            .replace_claims(baseline.stored_claims(), Timestamp::now());
        self.state.restore_reservations(reserve);
        self.state.clear_dirty();
        self.rv = None;
        Err(self.fail(format!("gave up after {} conflicting writes", self.max_attempts)))
    }
}

/// A timestamp `after` from now.
pub(crate) fn expiry(after: Duration) -> Timestamp {
    let now = Timestamp::now();
    let span = k8s_openapi::jiff::SignedDuration::try_from(after).unwrap_or_default();
    now.checked_add(span).unwrap_or(now)
}
