//! One range's state in the cluster: a `RangeAllocation` object, read-modify-written under a
//! `resourceVersion` precondition.
//!
//! Each [`AllocationStore`] owns a writer task. Callers send it jobs (closures over the range
//! state); the writer takes every job waiting, runs them in order on a copy of its cached state
//! and writes the result once with `PUT` + the cached `resourceVersion`. A 409 means another
//! replica wrote first: the writer re-reads the object, re-runs the same jobs on the fresh state
//! and tries again (bounded, with jitter). Results are only handed back after a successful write,
//! so a caller never sees a value that is not persisted. The writer task keeps going when a
//! caller gives up (a webhook request past its deadline): whatever it wrote stays consistent and
//! unconfirmed claims expire.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::crd::{self, DecodeError, RangeAllocation};
use super::metrics::AllocationMetrics;
use super::pool::{Pool, RangeState};

/// Most jobs written in one PUT.
const MAX_BATCH: usize = 256;

/// Why a store operation failed. Cloneable: one failure may end a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RangeAllocation {object}: {reason}")]
pub struct StoreFailure {
    /// The object's name.
    pub object: String,
    /// What went wrong.
    pub reason: String,
}

type JobFn<P> = Box<dyn FnMut(&mut RangeState<P>) + Send>;

struct Job<P: Pool> {
    run: JobFn<P>,
    /// Re-read the object before running (dry runs, repair reads).
    fresh: bool,
    /// Run on a throw-away copy: never written.
    scratch: bool,
    done: oneshot::Sender<Result<(), StoreFailure>>,
}

/// The cluster-backed state of one range. Cheap to clone (a handle to the writer task).
pub struct AllocationStore<P: Pool> {
    name: String,
    range: String,
    tx: mpsc::UnboundedSender<Job<P>>,
}

impl<P: Pool> Clone for AllocationStore<P> {
    fn clone(&self) -> Self {
        AllocationStore {
            name: self.name.clone(),
            range: self.range.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<P: Pool> std::fmt::Debug for AllocationStore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocationStore")
            .field("name", &self.name)
            .field("range", &self.range)
            .finish()
    }
}

struct Writer<P: Pool> {
    api: Api<RangeAllocation>,
    name: String,
    template: P,
    max_attempts: u32,
    metrics: Option<AllocationMetrics>,
    cached: Option<(RangeState<P>, String)>,
}

impl<P: Pool> AllocationStore<P> {
    /// Opens the object `name` for `pool`'s range: reads it, creates it empty when absent, and
    /// resets it (with a warning) when it holds another range, since a configuration change
    /// makes the old bitmap meaningless; the caller then rebuilds from the Services.
    /// Spawns the writer task on the current Tokio runtime.
    pub async fn open(
        client: Client,
        name: impl Into<String>,
        pool: P,
        max_attempts: u32,
        metrics: Option<AllocationMetrics>,
    ) -> Result<Self, StoreFailure> {
        let name = name.into();
        let range = pool.range_string();
        let mut writer = Writer {
            api: Api::all(client),
            name: name.clone(),
            template: pool.empty_like(),
            max_attempts: max_attempts.max(1),
            metrics,
            cached: None,
        };
        writer.open().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!("range_store", object = %name, range = %range);
        tokio::spawn(writer.run(rx).instrument(span));
        Ok(AllocationStore { name, range, tx })
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The range, as stored.
    pub fn range(&self) -> &str {
        &self.range
    }

    /// Runs `f` on the state and persists what it changed. `f` may run several times (once per
    /// attempt, on fresh state) and must leave the state unchanged when it returns `Err`.
    pub async fn update<R, F>(&self, f: F) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&mut RangeState<P>) -> R + Send + 'static,
    {
        self.submit(f, false, false).await
    }

    /// Runs `f` on a copy of freshly read state; nothing is written (dry runs).
    pub async fn dry_run<R, F>(&self, f: F) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&mut RangeState<P>) -> R + Send + 'static,
    {
        self.submit(f, true, true).await
    }

    /// A copy of the state as last read or written by this process.
    pub async fn cached(&self) -> Result<RangeState<P>, StoreFailure> {
        self.submit(|s: &mut RangeState<P>| s.clone(), false, true).await
    }

    /// A copy of the state as currently stored (re-reads the object).
    pub async fn read(&self) -> Result<RangeState<P>, StoreFailure> {
        self.submit(|s: &mut RangeState<P>| s.clone(), true, true).await
    }

    async fn submit<R, F>(&self, mut f: F, fresh: bool, scratch: bool) -> Result<R, StoreFailure>
    where
        R: Send + 'static,
        F: FnMut(&mut RangeState<P>) -> R + Send + 'static,
    {
        let slot: Arc<Mutex<Option<R>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let (done, wait) = oneshot::channel();
        let job = Job {
            run: Box::new(move |state: &mut RangeState<P>| {
                let r = f(state);
                if let Ok(mut s) = out.lock() {
                    *s = Some(r);
                }
            }),
            fresh,
            scratch,
            done,
        };
        let closed = || StoreFailure {
            object: self.name.clone(),
            reason: "the store's writer task has stopped".to_owned(),
        };
        self.tx.send(job).map_err(|_| closed())?;
        wait.await.map_err(|_| closed())??;
        let result = slot.lock().ok().and_then(|mut s| s.take());
        result.ok_or_else(closed)
    }
}

fn is_status(e: &kube::Error, pred: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if pred(s))
}

impl<P: Pool> Writer<P> {
    fn fail(&self, reason: impl std::fmt::Display) -> StoreFailure {
        StoreFailure {
            object: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    fn object(&self, state: &RangeState<P>, resource_version: Option<String>) -> RangeAllocation {
        let (spec, status) = crd::encode(state);
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

    fn remember(&mut self, state: RangeState<P>, resource_version: String) {
        if let Some(m) = &self.metrics {
            m.observe(&state);
        }
        self.cached = Some((state, resource_version));
    }

    /// Initial load: like [`Self::load`], but a range mismatch resets the object.
    async fn open(&mut self) -> Result<(), StoreFailure> {
        match self.load().await {
            Err(Loaded::Mismatch { stored, rv }) => {
                tracing::warn!(
                    object = %self.name,
                    stored = %stored,
                    configured = %self.template.range_string(),
                    "the stored range differs from the configured one: resetting the object; \
                     it is rebuilt from the Services"
                );
                let empty = RangeState::new(self.template.empty_like());
                let obj = self.object(&empty, Some(rv));
                let written = self
                    .api
                    .replace(&self.name, &PostParams::default(), &obj)
                    .await
                    .map_err(|e| self.fail(e))?;
                let rv = written.resource_version().unwrap_or_default();
                self.remember(empty, rv);
                Ok(())
            }
            Err(Loaded::Failed(f)) => Err(f),
            Ok(()) => Ok(()),
        }
    }

    /// Reads the object into the cache, creating it when absent (AlreadyExists: somebody else
    /// created it, read again).
    async fn load(&mut self) -> Result<(), Loaded> {
        for _ in 0..self.max_attempts {
            match self.api.get_opt(&self.name).await {
                Ok(Some(obj)) => {
                    let rv = obj.resource_version().unwrap_or_default();
                    return match crd::decode(&self.template, &obj.spec) {
                        Ok(state) => {
                            let state = state.with_last_repair(obj.status.and_then(|s| s.last_repair));
                            self.remember(state, rv);
                            Ok(())
                        }
                        Err(DecodeError::RangeMismatch { stored, .. }) => {
                            Err(Loaded::Mismatch { stored, rv })
                        }
                        Err(e) => Err(Loaded::Failed(self.fail(e))),
                    };
                }
                Ok(None) => {
                    let empty = RangeState::new(self.template.empty_like());
                    let obj = self.object(&empty, None);
                    match self.api.create(&PostParams::default(), &obj).await {
                        Ok(created) => {
                            let rv = created.resource_version().unwrap_or_default();
                            tracing::info!(object = %self.name, "created the RangeAllocation object");
                            self.remember(empty, rv);
                            return Ok(());
                        }
                        Err(e) if is_status(&e, |s| s.is_already_exists()) => continue,
                        // The CRD was just installed and is not served yet.
                        Err(e) if is_status(&e, |s| s.is_not_found()) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        Err(e) => return Err(Loaded::Failed(self.fail(e))),
                    }
                }
                Err(e) => return Err(Loaded::Failed(self.fail(e))),
            }
        }
        Err(Loaded::Failed(self.fail("could not read or create the object")))
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job<P>>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let result = self.process(&mut batch).await;
            for job in batch {
                let _ = job.done.send(result.clone());
            }
        }
    }

    async fn process(&mut self, batch: &mut [Job<P>]) -> Result<(), StoreFailure> {
        let mut refresh = self.cached.is_none() || batch.iter().any(|j| j.fresh);
        for attempt in 1..=self.max_attempts {
            if refresh {
                match self.load().await {
                    Ok(()) => {}
                    Err(Loaded::Mismatch { stored, .. }) => {
                        return Err(self.fail(format!(
                            "holds range {stored}, this allocator is configured for {}",
                            self.template.range_string()
                        )));
                    }
                    Err(Loaded::Failed(f)) => return Err(f),
                }
            }
            let Some((state, rv)) = &self.cached else {
                return Err(self.fail("no state loaded"));
            };
            let mut work = state.clone();
            work.clear_dirty();
            for job in batch.iter_mut() {
                if job.scratch {
                    let mut copy = work.clone();
                    (job.run)(&mut copy);
                } else {
                    (job.run)(&mut work);
                }
            }
            if !work.is_dirty() {
                return Ok(());
            }
            let obj = self.object(&work, Some(rv.clone()));
            match self.api.replace(&self.name, &PostParams::default(), &obj).await {
                Ok(written) => {
                    let rv = written.resource_version().unwrap_or_default();
                    work.clear_dirty();
                    self.remember(work, rv);
                    return Ok(());
                }
                Err(e) if is_status(&e, |s| s.is_conflict() || s.is_not_found()) => {
                    if let Some(m) = &self.metrics {
                        m.conflict(P::KIND, &self.template.range_string());
                    }
                    tracing::debug!(attempt, "lost a write race, re-reading");
                    refresh = true;
                    let jitter = rand::rng().random_range(0..=5 * u64::from(attempt.min(20)));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => {
                    // The write may or may not have happened: forget the cache.
                    self.cached = None;
                    return Err(self.fail(e));
                }
            }
        }
        Err(self.fail(format!("gave up after {} conflicting writes", self.max_attempts)))
    }
}

enum Loaded {
    Mismatch { stored: String, rv: String },
    Failed(StoreFailure),
}

/// A timestamp `after` from now.
pub(crate) fn expiry(after: Duration) -> Timestamp {
    let now = Timestamp::now();
    let span = k8s_openapi::jiff::SignedDuration::try_from(after).unwrap_or_default();
    now.checked_add(span).unwrap_or(now)
}
