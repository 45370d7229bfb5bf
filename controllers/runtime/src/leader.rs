//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.
//!
//! Every replica runs [`run_elected`]; the one holding the Lease runs the work it is given (the
//! controllers, the repair loop) and the others wait, so only one replica writes. kube-runtime 5
//! has no leader election, and this small loop is used instead of a third-party crate because
//! it must *step down on its own* when it cannot renew (a partitioned leader has to stop
//! writing before another replica may take over, without hearing from the apiserver).
//!
//! The Lease record (`holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`,
//! `leaseTransitions`) is the one client-go writes, so `kubectl get lease` reads the same:
//!
//! * **Acquire.** A candidate reads the Lease every `retry_period`. A Lease that is absent, has
//!   no holder, or is held by this identity is claimed at once. One held by another identity
//!   is claimed once it has not changed for `leaseDurationSeconds` *as measured by the
//!   candidate's own monotonic clock since it last saw the record change*, never by comparing
//!   `renewTime` with the local wall clock, so clock skew between nodes does not matter.
//! * **Fence.** Every write is a create (which fails if the Lease exists) or a replace
//!   conditional on the `resourceVersion` that was read, so of two candidates claiming at the
//!   same time exactly one succeeds, and a leader never overwrites a claim it has not seen.
//! * **Renew.** The leader rewrites `renewTime` every `retry_period`. If no renewal has
//!   succeeded for `renew_deadline` (counted from the moment the last successful one was
//!   *sent*), or a renewal finds another holder, leadership is lost: the work's token is
//!   cancelled at once and the work awaited. Requests are cut off at the deadline, so a hung
//!   apiserver connection cannot delay this. The others may take over `lease_duration` after
//!   they last saw the record change, which is after the leader's last successful send, so the
//!   work has `lease_duration - renew_deadline` to stop before anyone else starts.
//! * **Release.** On shutdown the work is stopped and awaited first, then the Lease is written
//!   with no holder, so another replica takes over within one `retry_period` instead of waiting
//!   for expiry.
//!
//! A lease narrows, but cannot fully close, the window in which two processes believe they lead
//! (a process paused longer than the lease duration wakes up still believing it). Writes that
//! must never be duplicated still need their own optimistic concurrency (resourceVersion
//! preconditions, create-if-absent), as the allocators have.
//!
//! Leadership is exported as a 0/1 gauge; [`leader_gauge`] registers the series under
//! client-go's name, `leader_election_master_status{name="<lease>"}`, and mirrors it as
//! `portico_is_leader` for dashboards that want one unlabelled series per replica.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where and how to campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the release namespace).
    pub namespace: String,
    /// Name of the Lease, e.g. `<release>-controller`.
    pub name: String,
    /// This replica's identity, unique among the candidates (the pod name). Two processes with
    /// the same identity would both believe they hold the Lease.
    pub identity: String,
    /// How long the others wait after the record last changed before they may take it over.
    /// Written to the Lease rounded up to whole seconds. Default 15 s.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal. Default 10 s.
    pub renew_deadline: Duration,
    /// How often candidates read the Lease and the leader renews it. Default 2 s.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// A configuration with controller-runtime's timings (15 s / 10 s / 2 s).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timings as client-go does: `lease_duration > renew_deadline > 1.2 ×
    /// retry_period > 0`, and names that are set.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let fail = |msg: String| Err(LeaderError::Config(msg));
        if self.namespace.is_empty() || self.name.is_empty() {
            return fail("the Lease namespace and name must be set".into());
        }
        if self.identity.is_empty() {
            return fail("the identity must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return fail("the retry period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return fail(format!(
                "the renew deadline ({:?}) must be more than 1.2 × the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return fail(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.lease_duration.as_secs_f64().ceil() > f64::from(i32::MAX) {
            return fail(format!(
                "the lease duration ({:?}) is too long",
                self.lease_duration
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds`: the lease duration rounded up to whole seconds (at least 1).
    fn lease_duration_seconds(&self) -> i32 {
        (self.lease_duration.as_secs_f64().ceil() as i32).max(1)
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why [`run_elected`] returned with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    /// The configuration is out of range ([`LeaderConfig::validate`]).
    #[error("invalid leader election configuration: {0}")]
    Config(String),
    /// This replica led and lost the Lease; its work has been stopped and awaited.
    #[error("leadership of Lease {lease} lost: {reason}")]
    Lost {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What happened (renew deadline passed, another holder, ...).
        reason: String,
    },
}

/// Registers client-go's leadership gauge, `leader_election_master_status{name}` (1 while
/// this process leads, else 0), and its unlabelled mirror `portico_is_leader`, in `registry`,
/// and returns the series for `lease_name`, to pass to [`run_elected`].
pub fn leader_gauge(registry: &Registry, lease_name: &str) -> Result<IntGauge, prometheus::Error> {
    let vec = IntGaugeVec::new(
        Opts::new(
            "leader_election_master_status",
            "Whether this process holds the leader election Lease (1) or not (0)",
        ),
        &["name"],
    )?;
    registry.register(Box::new(vec.clone()))?;
    let gauge = vec.with_label_values(&[lease_name]);
    gauge.set(0);
    let mirror = IntGauge::new(
        "portico_is_leader",
        "Whether this replica is the elected leader (1) or not (0); the same value as leader_election_master_status",
    )?;
    registry.register(Box::new(Mirror {
        source: gauge.clone(),
        mirror,
    }))?;
    Ok(gauge)
}

/// A gauge that reads its value from another at scrape time, so the two can never disagree.
struct Mirror {
    source: IntGauge,
    mirror: IntGauge,
}

impl Collector for Mirror {
    fn desc(&self) -> Vec<&Desc> {
        self.mirror.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.mirror.set(self.source.get());
        self.mirror.collect()
    }
}

/// Campaigns for the Lease in `cfg` until `shutdown` is cancelled or leadership is lost.
///
/// On acquiring the Lease, `is_leader` is set to 1 and `lead` is spawned with a token that is
/// cancelled when leadership ends; the work must stop promptly once it is (it is awaited
/// before this function returns, and before the Lease is released).
///
/// * `shutdown` cancelled: the work (if any) is stopped and awaited, the Lease released if
///   held, and `Ok(())` returned.
/// * The work returns on its own: the Lease is released and `Ok(())` returned (a panic in
///   the work is resumed after the release).
/// * Leadership lost (renew deadline passed, or another holder): `is_leader` drops to 0, the
///   work is stopped and awaited, and [`LeaderError::Lost`] returned. The usual reaction is to
///   exit, so the replica restarts as a clean candidate (client-go's convention); calling
///   `run_elected` again with fresh work rejoins the election instead.
///
/// API errors while campaigning are logged and retried every `retry_period`; they never end
/// the campaign.
pub async fn run_elected<F, Fut>(
    client: kube::Client,
    cfg: LeaderConfig,
    is_leader: IntGauge,
    shutdown: CancellationToken,
    lead: F,
) -> Result<(), LeaderError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    cfg.validate()?;
    is_leader.set(0);
    let mut elector = Elector::new(client, cfg);
    let lease = elector.cfg.lease();

    // Campaign.
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            outcome = elector.try_acquire_or_renew() => outcome,
        };
        match outcome {
            Ok(Claim::Held) => break,
            Ok(Claim::Busy { holder, expires }) => {
                let wait = elector
                    .cfg
                    .retry_period
                    .min(expires.saturating_duration_since(Instant::now()));
                tracing::debug!(%lease, %holder, ?wait, "Lease held by another candidate");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                }
            }
            Err(e) => {
                tracing::warn!(%lease, error = %e, "cannot read or claim the leader election Lease; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep_until(started + elector.cfg.retry_period) => {}
                }
            }
        }
    }

    // Lead.
    let mut schedule = RenewSchedule::new(elector.last_sent);
    is_leader.set(1);
    tracing::info!(%lease, identity = %elector.cfg.identity, "became leader");
    let work = shutdown.child_token();
    let mut handle = tokio::spawn(lead(work.clone()));
    let renew_deadline = elector.cfg.renew_deadline;
    let ended = loop {
        let (next, deadline) = schedule.next(&elector.cfg);
        let renewal = async {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            if sent >= deadline {
                return (sent, Err(Renewal::DeadlinePassed));
            }
            let outcome = match tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()).await {
                Err(_) => Err(Renewal::DeadlinePassed),
                Ok(Ok(Claim::Held)) => Ok(()),
                Ok(Ok(Claim::Busy { holder, .. })) => Err(Renewal::Taken(holder)),
                Ok(Err(e)) => Err(Renewal::Failed(e)),
            };
            (sent, outcome)
        };
        tokio::select! {
            () = shutdown.cancelled() => break Ended::Shutdown,
            joined = &mut handle => break Ended::WorkReturned(joined),
            (sent, outcome) = renewal => {
                schedule.attempted(sent, outcome.is_ok());
                match outcome {
                    Ok(()) => {}
                    Err(Renewal::Failed(e)) => {
                        tracing::warn!(%lease, error = %e, "cannot renew the leader election Lease; retrying");
                    }
                    Err(Renewal::DeadlinePassed) => {
                        break Ended::Lost(format!(
                            "not renewed within the renew deadline ({renew_deadline:?})"
                        ));
                    }
                    Err(Renewal::Taken(holder)) => {
                        break Ended::Lost(format!("the Lease is now held by {holder:?}"));
                    }
                }
            }
        }
    };

    // Step down: leadership ends first, then the work stops, then (if still ours) the Lease
    // is released.
    is_leader.set(0);
    work.cancel();
    match ended {
        Ended::Lost(reason) => {
            tracing::warn!(%lease, %reason, "lost leadership; stopping the leader's work");
            let grace = elector
                .cfg
                .lease_duration
                .saturating_sub(elector.cfg.renew_deadline);
            let _ = await_work(handle, grace, &lease).await;
            Err(LeaderError::Lost { lease, reason })
        }
        Ended::Shutdown => {
            tracing::info!(%lease, "shutting down; stopping the leader's work");
            let grace = elector
                .cfg
                .lease_duration
                .saturating_sub(elector.cfg.renew_deadline);
            let joined = await_work(handle, grace, &lease).await;
            elector.release().await;
            resume_panic(joined);
            Ok(())
        }
        Ended::WorkReturned(joined) => {
            tracing::info!(%lease, "the leader's work ended; stepping down");
            elector.release().await;
            resume_panic(joined);
            Ok(())
        }
    }
}

enum Ended {
    Shutdown,
    WorkReturned(Result<(), tokio::task::JoinError>),
    Lost(String),
}

enum Renewal {
    DeadlinePassed,
    Taken(String),
    Failed(kube::Error),
}

/// Waits for the work to finish, warning once if it takes longer than `grace` (by then
/// another replica may lead).
async fn await_work(
    mut handle: tokio::task::JoinHandle<()>,
    grace: Duration,
    lease: &str,
) -> Result<(), tokio::task::JoinError> {
    match tokio::time::timeout(grace, &mut handle).await {
        Ok(joined) => joined,
        Err(_) => {
            tracing::warn!(
                %lease, ?grace,
                "the leader's work is still running after its token was cancelled; another replica may lead by now"
            );
            handle.await
        }
    }
}

fn resume_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// When the leader renews, and until when it may go on leading without a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RenewSchedule {
    /// When the last successful write was sent.
    renewed: Instant,
    /// When the last attempt was sent.
    attempted: Instant,
}

impl RenewSchedule {
    fn new(acquired: Instant) -> Self {
        RenewSchedule {
            renewed: acquired,
            attempted: acquired,
        }
    }

    /// (next attempt, deadline): one retry period after the last attempt, but never after the
    /// renew deadline, which runs from the last successful write.
    fn next(&self, cfg: &LeaderConfig) -> (Instant, Instant) {
        let deadline = self.renewed + cfg.renew_deadline;
        ((self.attempted + cfg.retry_period).min(deadline), deadline)
    }

    fn attempted(&mut self, sent: Instant, ok: bool) {
        self.attempted = sent;
        if ok {
            self.renewed = sent;
        }
    }
}

/// The outcome of one acquire-or-renew attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// This identity holds the Lease (just written).
    Held,
    /// Another identity holds it, valid until `expires` (by this candidate's clock).
    Busy { holder: String, expires: Instant },
}

/// What a candidate knows of the Lease between attempts, and the writes it makes.
struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    observer: Observer,
    /// The Lease as this identity last wrote it (while it holds it).
    held: Option<Lease>,
    /// When the last successful write of this identity was sent.
    last_sent: Instant,
}

impl Elector {
    fn new(client: kube::Client, cfg: LeaderConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observer: Observer::default(),
            held: None,
            last_sent: Instant::now(),
        }
    }

    /// client-go's `tryAcquireOrRenew`: a renewal of the Lease as last written (the fast path
    /// while leading), else a read and, if the verdict allows, a conditional claim.
    async fn try_acquire_or_renew(&mut self) -> Result<Claim, kube::Error> {
        let sent = Instant::now();
        if let Some(held) = &self.held {
            let mut lease = held.clone();
            let old = lease.spec.take();
            lease.spec = Some(claim_spec(old.as_ref(), &self.cfg, false, Timestamp::now()));
            match self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => return Ok(self.wrote(written, sent)),
                Err(e) => tracing::debug!(error = %e, "fast renewal failed; reading the Lease"),
            }
        }

        let current = match self.api.get(&self.cfg.name).await {
            Ok(lease) => lease,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claim_spec(None, &self.cfg, true, Timestamp::now())),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(written) => Ok(self.wrote(written, sent)),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.busy("another candidate")),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        self.observer.observe(current.spec.as_ref(), now);
        match self.observer.verdict(&self.cfg, now) {
            Verdict::Busy { holder, expires } => {
                self.held = None;
                Ok(Claim::Busy { holder, expires })
            }
            Verdict::Claim { transition } => {
                let mut lease = current;
                let old = lease.spec.take();
                lease.spec = Some(claim_spec(old.as_ref(), &self.cfg, transition, Timestamp::now()));
                match self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(written) => Ok(self.wrote(written, sent)),
                    // Someone else wrote first (the resourceVersion moved): they won this round.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.busy("another candidate")),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn wrote(&mut self, written: Lease, sent: Instant) -> Claim {
        self.observer.observe(written.spec.as_ref(), Instant::now());
        self.held = Some(written);
        self.last_sent = sent;
        Claim::Held
    }

    /// Lost a race for the Lease: look again after a retry period.
    fn busy(&mut self, holder: &str) -> Claim {
        self.held = None;
        Claim::Busy {
            holder: holder.to_owned(),
            expires: Instant::now() + self.cfg.retry_period,
        }
    }

    /// Gives the Lease up (if this identity still holds it as last written): no holder, a
    /// one-second duration. Failures are logged; the Lease then expires on its own.
    async fn release(&mut self) {
        let Some(mut lease) = self.held.take() else {
            return;
        };
        let old = lease.spec.take();
        lease.spec = Some(release_spec(old.as_ref(), Timestamp::now()));
        let lease_name = self.cfg.lease();
        let params = PostParams::default();
        let write = self.api.replace(&self.cfg.name, &params, &lease);
        match tokio::time::timeout(self.cfg.renew_deadline, write).await {
            Ok(Ok(_)) => tracing::info!(lease = %lease_name, "released the leader election Lease"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %lease_name, error = %e, "cannot release the Lease; it will expire")
            }
            Err(_) => tracing::warn!(lease = %lease_name, "releasing the Lease timed out; it will expire"),
        }
    }
}

/// client-go's `observedRecord` / `observedTime`: the record last read and when (by the
/// local monotonic clock) it was first seen in that state.
#[derive(Debug, Default)]
struct Observer {
    record: Option<LeaseSpec>,
    since: Option<Instant>,
}

/// What a candidate may do with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Write this identity's record. `transition`: the holder changes (a new `acquireTime`,
    /// `leaseTransitions` + 1).
    Claim { transition: bool },
    /// Another identity holds a Lease that is valid until `expires`.
    Busy { holder: String, expires: Instant },
}

impl Observer {
    /// Records the spec read at `now`; the clock restarts only when the record changed.
    fn observe(&mut self, spec: Option<&LeaseSpec>, now: Instant) {
        let spec = spec.cloned().unwrap_or_default();
        if self.since.is_none() || self.record.as_ref() != Some(&spec) {
            self.record = Some(spec);
            self.since = Some(now);
        }
    }

    /// May `cfg.identity` claim the Lease at `now`?
    fn verdict(&self, cfg: &LeaderConfig, now: Instant) -> Verdict {
        let (Some(spec), Some(since)) = (&self.record, self.since) else {
            return Verdict::Claim { transition: true };
        };
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() {
            return Verdict::Claim { transition: true };
        }
        if holder == cfg.identity {
            return Verdict::Claim { transition: false };
        }
        let duration = match spec.lease_duration_seconds {
            Some(secs) if secs > 0 => Duration::from_secs(secs.unsigned_abs().into()),
            _ => cfg.lease_duration,
        };
        let expires = since + duration;
        if now >= expires {
            Verdict::Claim { transition: true }
        } else {
            Verdict::Busy {
                holder: holder.to_owned(),
                expires,
            }
        }
    }
}

/// The record `cfg.identity` writes over `old` at `now`.
fn claim_spec(old: Option<&LeaseSpec>, cfg: &LeaderConfig, transition: bool, now: Timestamp) -> LeaseSpec {
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    let acquired = old.and_then(|s| s.acquire_time.clone());
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration_seconds()),
        acquire_time: Some(match (transition, acquired) {
            (false, Some(at)) => at,
            _ => MicroTime(now),
        }),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match (old, transition) {
            (None, _) => 0,
            (Some(_), true) => transitions.saturating_add(1),
            (Some(_), false) => transitions,
        }),
        preferred_holder: None,
        strategy: None,
    }
}

/// The record a leader leaves when it steps down: no holder, so the next candidate to read it
/// claims it at once (client-go's `ReleaseOnCancel`).
fn release_spec(old: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: old.and_then(|s| s.lease_transitions),
        preferred_holder: None,
        strategy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(identity: &str) -> LeaderConfig {
        LeaderConfig {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(300),
            ..LeaderConfig::new("ns", "lease", identity)
        }
    }

    fn held_by(holder: &str, renewed_at_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(2),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_at_secs).unwrap())),
            acquire_time: Some(MicroTime(Timestamp::from_second(100).unwrap())),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn validation_follows_client_go() {
        cfg("a").validate().unwrap();
        LeaderConfig::new("ns", "lease", "a").validate().unwrap();
        let bad = |f: fn(&mut LeaderConfig)| {
            let mut c = cfg("a");
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.identity.clear()).contains("identity"));
        assert!(bad(|c| c.name.clear()).contains("name"));
        assert!(bad(|c| c.retry_period = Duration::ZERO).contains("retry period"));
        assert!(bad(|c| c.renew_deadline = Duration::from_millis(360)).contains("1.2"));
        assert!(bad(|c| c.lease_duration = Duration::from_millis(1500)).contains("longer"));
        let mut c = cfg("a");
        c.lease_duration = Duration::from_millis(2100);
        assert_eq!(c.lease_duration_seconds(), 3, "rounded up");
    }

    #[test]
    fn absent_empty_or_own_leases_are_claimed_at_once() {
        let c = cfg("me");
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(
            o.verdict(&c, t0),
            Verdict::Claim { transition: true },
            "nothing seen yet"
        );
        o.observe(None, t0);
        assert_eq!(o.verdict(&c, t0), Verdict::Claim { transition: true }, "no spec");
        o.observe(Some(&LeaseSpec::default()), t0);
        assert_eq!(
            o.verdict(&c, t0),
            Verdict::Claim { transition: true },
            "no holder"
        );
        o.observe(
            Some(&release_spec(Some(&held_by("other", 5)), Timestamp::now())),
            t0,
        );
        assert_eq!(o.verdict(&c, t0), Verdict::Claim { transition: true }, "released");
        o.observe(Some(&held_by("me", 5)), t0);
        assert_eq!(
            o.verdict(&c, t0),
            Verdict::Claim { transition: false },
            "ours (a restart)"
        );
    }

    #[test]
    fn another_holder_expires_by_the_local_clock_since_the_record_last_changed() {
        let c = cfg("me");
        let t0 = Instant::now();
        let mut o = Observer::default();
        // renewTime far in the past by the wall clock: irrelevant, only observation counts.
        o.observe(Some(&held_by("other", 1)), t0);
        let busy = |expires| Verdict::Busy {
            holder: "other".into(),
            expires,
        };
        assert_eq!(o.verdict(&c, t0), busy(t0 + Duration::from_secs(2)));
        // The same record seen again does not restart the clock...
        o.observe(Some(&held_by("other", 1)), t0 + Duration::from_millis(1900));
        assert_eq!(
            o.verdict(&c, t0 + Duration::from_millis(1999)),
            busy(t0 + Duration::from_secs(2))
        );
        assert_eq!(
            o.verdict(&c, t0 + Duration::from_secs(2)),
            Verdict::Claim { transition: true }
        );
        // ...a renewal does.
        let t1 = t0 + Duration::from_millis(2500);
        o.observe(Some(&held_by("other", 2)), t1);
        assert_eq!(
            o.verdict(&c, t1 + Duration::from_millis(1999)),
            busy(t1 + Duration::from_secs(2))
        );
        // The record's own duration wins over ours; none or zero falls back to ours.
        let mut long = held_by("other", 3);
        long.lease_duration_seconds = Some(30);
        o.observe(Some(&long), t1);
        assert_eq!(o.verdict(&c, t1), busy(t1 + Duration::from_secs(30)));
        long.lease_duration_seconds = Some(0);
        o.observe(Some(&long), t1);
        assert_eq!(o.verdict(&c, t1), busy(t1 + Duration::from_secs(2)));
    }

    #[test]
    fn records_written_keep_or_advance_acquire_time_and_transitions() {
        let c = cfg("me");
        let now = Timestamp::from_second(1000).unwrap();
        let created = claim_spec(None, &c, true, now);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_duration_seconds, Some(2));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));
        assert_eq!(created.renew_time, Some(MicroTime(now)));

        let taken = claim_spec(Some(&held_by("other", 5)), &c, true, now);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));

        let mine = held_by("me", 5);
        let renewed = claim_spec(Some(&mine), &c, false, now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(
            renewed.acquire_time, mine.acquire_time,
            "a renewal keeps acquireTime"
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let released = release_spec(Some(&mine), now);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
    }

    #[test]
    fn renewals_every_retry_period_until_the_deadline_from_the_last_success() {
        let c = cfg("me");
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut s = RenewSchedule::new(t0);
        assert_eq!(s.next(&c), (t0 + ms(300), t0 + ms(1500)));
        s.attempted(t0 + ms(300), true);
        assert_eq!(s.next(&c), (t0 + ms(600), t0 + ms(1800)));
        // Failures do not move the deadline; attempts go on every retry period...
        s.attempted(t0 + ms(600), false);
        s.attempted(t0 + ms(1300), false);
        assert_eq!(s.next(&c), (t0 + ms(1600), t0 + ms(1800)));
        // ...and the last one is due at the deadline itself (where leadership ends).
        s.attempted(t0 + ms(1600), false);
        assert_eq!(s.next(&c), (t0 + ms(1800), t0 + ms(1800)));
        s.attempted(t0 + ms(1700), true);
        assert_eq!(s.next(&c), (t0 + ms(2000), t0 + ms(3200)));
    }

    #[test]
    fn gauge_registers_under_client_go_name() {
        let registry = Registry::new();
        let g = leader_gauge(&registry, "portico-controller").unwrap();
        g.set(1);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"leader_election_master_status{name="portico-controller"} 1"#),
            "{text}"
        );
        assert!(text.contains("\nportico_is_leader 1\n"), "{text}");
        g.set(0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("\nportico_is_leader 0\n"), "{text}");
        assert!(
            leader_gauge(&registry, "again").is_err(),
            "registered once per registry"
        );
    }
}
