//! The state of one range in one process: which values the cluster holds (from the watches),
//! which are claimed by admissions whose Service has not shown up yet, and the bitmap that is
//! their union. Pure: no I/O, and the clock is an argument.
//!
//! A value is **used** while the cluster holds it (a Service carries it, or, for clusterIPs, an
//! `IPAddress` object of that name exists) or while a live claim covers it. A claim ends when
//! its Service shows up holding the value (it is then *fulfilled*), when its TTL passes, or when
//! the admission that made it is undone. Only claims are shared between replicas (through the
//! `RangeAllocation` object); the holdings each process learns from its own watches, so a value
//! is free again the moment the watch reports its Service gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::crd::RepairSummary;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use portico_allocators::{AllocError, Band, BandStats, PortAllocator};

/// How long a fulfilled claim stays in the shared object: long enough for another replica whose
/// watch lags to see the Service before the claim disappears from under it.
pub const FULFILLED_LINGER: Duration = Duration::from_secs(3);

/// Whether a range holds ClusterIPs or NodePorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// Service ClusterIPs of one family.
    ClusterIp,
    /// Service NodePorts (and health-check node ports).
    NodePort,
}

impl RangeKind {
    /// `clusterip` / `nodeport`, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RangeKind::ClusterIp => "clusterip",
            RangeKind::NodePort => "nodeport",
        }
    }
}

/// Namespace part of a reservation's owner (see [`ServiceRef::reservation`]).
pub const RESERVED_NAMESPACE: &str = ":reserved";

/// A replica reserves at most one value per this many free ones in the dynamic band, so its
/// reservations never hide more than a small share of what is left from another replica, and
/// none once fewer than this many are free.
const RESERVE_HEADROOM: u64 = 32;

/// Next-fit positions by range (`(static, dynamic)` offsets), stored with the claims.
pub type Cursors = BTreeMap<String, (u32, u32)>;

/// The bitmap operations a range needs, implemented for [`IpPool`](super::IpPool) and
/// [`PortAllocator`].
pub trait Pool: Clone + fmt::Debug + Send + Sync + 'static {
    /// An address or a port number.
    type Value: Copy + Ord + Hash + fmt::Display + fmt::Debug + FromStr + Send + Sync + 'static;
    /// What the range holds.
    const KIND: RangeKind;

    /// The ranges, as shown to humans (`10.96.0.0/12`, `30000-32767`).
    fn range_string(&self) -> String;
    /// Whether `v` lies in an allocatable part of the pool.
    fn contains(&self, v: Self::Value) -> bool;
    /// Whether `v` is marked.
    fn has(&self, v: Self::Value) -> bool;
    /// The allocator's error when `v` is outside the pool; `Ok` inside it, marked or not.
    fn check(&self, v: Self::Value) -> Result<(), AllocError>;
    /// Upstream's "already allocated" error for this kind of value.
    fn taken() -> AllocError;
    /// Marks `v`; the allocator's error when it is outside the pool or already marked.
    fn allocate(&mut self, v: Self::Value) -> Result<(), AllocError>;
    /// Marks and returns the next free value (dynamic band first).
    fn allocate_next(&mut self) -> Result<Self::Value, AllocError>;
    /// Unmarks `v`; whether it was marked.
    fn release(&mut self, v: Self::Value) -> bool;
    /// Marked values, ascending, without duplicates.
    fn held(&self) -> Vec<Self::Value>;
    /// Occupancy of a band (summed over the ranges new values come from).
    fn band_stats(&self, band: Band) -> BandStats;
    /// Next-fit positions.
    fn cursors(&self) -> Cursors;
    /// Restores next-fit positions of the ranges that still exist.
    fn set_cursors(&mut self, cursors: &Cursors);
}

impl Pool for PortAllocator {
    type Value = i32;
    const KIND: RangeKind = RangeKind::NodePort;

    fn range_string(&self) -> String {
        self.range().to_string()
    }
    fn contains(&self, v: i32) -> bool {
        self.range().contains(v)
    }
    fn has(&self, v: i32) -> bool {
        PortAllocator::has(self, v)
    }
    fn check(&self, v: i32) -> Result<(), AllocError> {
        match PortAllocator::check_allocate(self, v) {
            Err(AllocError::PortAllocated) => Ok(()),
            other => other,
        }
    }
    fn taken() -> AllocError {
        AllocError::PortAllocated
    }
    fn allocate(&mut self, v: i32) -> Result<(), AllocError> {
        PortAllocator::allocate(self, v)
    }
    fn allocate_next(&mut self) -> Result<i32, AllocError> {
        PortAllocator::allocate_next(self)
    }
    fn release(&mut self, v: i32) -> bool {
        PortAllocator::release(self, v)
    }
    fn held(&self) -> Vec<i32> {
        self.iter().collect()
    }
    fn band_stats(&self, band: Band) -> BandStats {
        PortAllocator::band_stats(self, band)
    }
    fn cursors(&self) -> Cursors {
        [(self.range().to_string(), PortAllocator::cursors(self))].into()
    }
    fn set_cursors(&mut self, cursors: &Cursors) {
        if let Some((s, d)) = cursors.get(&self.range().to_string()) {
            PortAllocator::set_cursors(self, *s, *d);
        }
    }
}

/// A Service by namespace and name. The name is empty for a CREATE with `generateName` (the
/// apiserver generates it after admission): such a claim belongs to any Service of the namespace
/// that holds the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name (empty for `generateName`).
    pub name: String,
}

impl ServiceRef {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The owner of a replica's reservations: `:reserved/<replica>` (a namespace no Service can
    /// have, so it never matches one by name).
    pub fn reservation(replica: &str) -> Self {
        ServiceRef::new(RESERVED_NAMESPACE, replica)
    }

    /// Whether this owner is a replica's reservation.
    pub fn is_reservation(&self) -> bool {
        self.namespace == RESERVED_NAMESPACE
    }

    /// Whether a claim made for `self` is fulfilled by the Service `other`. A reservation is
    /// fulfilled by whoever holds the value: once held, it has been used.
    pub fn is_fulfilled_by(&self, other: &ServiceRef) -> bool {
        self.is_reservation()
            || (self.namespace == other.namespace && (self.name.is_empty() || self.name == other.name))
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceRef {
    type Err = std::convert::Infallible;

    /// `namespace/name`; a string without `/` is a name in the empty namespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.split_once('/') {
            Some((ns, name)) => ServiceRef::new(ns, name),
            None => ServiceRef::new("", s),
        })
    }
}

/// What holds a value in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    /// A Service carries it.
    Service(ServiceRef),
    /// An `IPAddress` object of that name exists; `parent` is its Service when `parentRef`
    /// points at one.
    Address {
        /// The Service named by `spec.parentRef`, if it names a core Service.
        parent: Option<ServiceRef>,
    },
}

impl Holder {
    /// The Service this holder stands for, if any.
    pub fn service(&self) -> Option<&ServiceRef> {
        match self {
            Holder::Service(s) => Some(s),
            Holder::Address { parent } => parent.as_ref(),
        }
    }
}

/// A value handed out in an admission and not yet seen on its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The Service it was handed to.
    pub owner: ServiceRef,
    /// When the claim lapses if the Service has not shown up with the value.
    pub expires: Timestamp,
}

/// A claim whose Service was seen holding the value. Remembered until the claim would have
/// expired, so that a copy of it still in the shared object (another replica writes it back
/// until it rewrites the object) never comes back to life here; stored in the object only for
/// [`FULFILLED_LINGER`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fulfilled {
    claim: Pending,
    at: Timestamp,
    stored: bool,
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The value was free and is now claimed.
    New,
    /// The value was already claimed for the same Service (a re-invoked webhook, a retried
    /// request): its expiry was extended.
    Renewed,
}

/// Saved reservation bookkeeping (see [`RangeState::save_reservations`]).
#[derive(Debug, Clone)]
pub struct SavedReservations<V>(Option<Reservations<V>>);

/// Whether `holder` taking the value ends a claim of `owner`: its own Service does, and any
/// holder ends a reservation (the value has been used, or taken by someone else).
fn fulfils(owner: &ServiceRef, holder: &Holder) -> bool {
    owner.is_reservation() || holder.service().is_some_and(|s| owner.is_fulfilled_by(s))
}

/// How a replica reserves next-free values ahead of requests: one shared write claims a batch
/// for the replica, and the requests that follow are answered from it without a write.
#[derive(Debug, Clone)]
struct Reservations<V> {
    /// Owner of this replica's reservations.
    owner: ServiceRef,
    /// Most values reserved per shared write.
    batch: usize,
    /// A reserved value is handed out only while at least this much of its TTL is left.
    min_left: SignedDuration,
    /// Reserved by this replica and not handed out yet, in next-fit order.
    available: std::collections::VecDeque<V>,
    /// Reserved values handed out, and to which Service (renewals, leak accounting).
    handed: HashMap<V, ServiceRef>,
}

/// One range: the cluster's holdings, live claims, and their union as a bitmap; tracks whether
/// the shared part (claims, cursors) changed.
#[derive(Debug, Clone)]
pub struct RangeState<P: Pool> {
    pool: P,
    holders: HashMap<P::Value, Vec<Holder>>,
    /// Claims and fulfilled claims are shared with [`ClaimsSnapshot`]s (copied on the first
    /// change while one lives): the writer takes one before every batch of jobs and uses it only
    /// when the write fails, which a batch that hands out reserved values never does.
    claims: Arc<BTreeMap<P::Value, Pending>>,
    fulfilled: Arc<BTreeMap<P::Value, Fulfilled>>,
    /// This replica's reservations, when it makes them.
    reservations: Option<Reservations<P::Value>>,
    /// A fulfilled claim stopped being stored (see [`RangeState::take_linger_ended`]).
    linger_ended: bool,
    /// The last claims that lapsed, numbered, and how many ever did.
    lapsed: std::collections::VecDeque<(u64, P::Value, Pending)>,
    lapsed_count: u64,
    /// Carried through every write, so admissions never erase the repair loop's report.
    last_repair: Option<RepairSummary>,
    dirty: bool,
}

/// Lapsed claims remembered for the repair report.
const LAPSED_KEPT: usize = 100;

impl<P: Pool> RangeState<P> {
    /// A state with nothing held or claimed.
    pub fn new(pool: P) -> Self {
        RangeState {
            pool,
            holders: HashMap::new(),
            claims: Arc::default(),
            fulfilled: Arc::default(),
            reservations: None,
            linger_ended: false,
            lapsed: std::collections::VecDeque::new(),
            lapsed_count: 0,
            last_repair: None,
            dirty: false,
        }
    }

    /// Makes next-free claims in batches of `batch` owned by `replica` (see [`Reservations`]),
    /// handing each reserved value out while at least half of `ttl` is left on it.
    pub fn with_reservations(mut self, replica: &str, batch: usize, ttl: Duration) -> Self {
        if batch > 1 {
            self.reservations = Some(Reservations {
                owner: ServiceRef::reservation(replica),
                batch,
                min_left: SignedDuration::try_from(ttl / 2).unwrap_or_default(),
                available: std::collections::VecDeque::new(),
                handed: HashMap::new(),
            });
        }
        self
    }

    /// The bitmap of used values (holdings inside the pool plus live claims).
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The live claims by value.
    pub fn pending(&self) -> &BTreeMap<P::Value, Pending> {
        &self.claims
    }

    /// What holds `v` in the cluster, as far as the watches have told.
    pub fn holders(&self, v: P::Value) -> &[Holder] {
        self.holders.get(&v).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every value the cluster holds, with its holders, in any order.
    pub fn holdings(&self) -> impl Iterator<Item = (&P::Value, &Vec<Holder>)> {
        self.holders.iter()
    }

    /// What the last repair pass recorded.
    pub fn last_repair(&self) -> Option<&RepairSummary> {
        self.last_repair.as_ref()
    }

    /// Records a repair pass (a change to write).
    pub fn record_repair(&mut self, summary: RepairSummary) {
        self.last_repair = Some(summary);
        self.dirty = true;
    }

    /// Restores the stored repair report (not a change).
    pub fn set_last_repair(&mut self, summary: Option<RepairSummary>) {
        // A report of this replica's not yet stored (its status write failed) is not replaced
        // by an older one read back. RFC 3339 times of one format compare as strings.
        let older = match (&summary, &self.last_repair) {
            (Some(stored), Some(mine)) => stored.time < mine.time,
            (None, Some(_)) => true,
            _ => false,
        };
        if !older {
            self.last_repair = summary;
        }
    }

    /// Whether the shared part changed since the last [`clear_dirty`](Self::clear_dirty).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Forgets about earlier changes.
    pub fn clear_dirty(&mut self) {
        self.dirty = false;
    }

    /// Marks `dirty` (a write is wanted even though no claim changed, e.g. to recreate a lost
    /// object).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    fn is_used(&self, v: P::Value) -> bool {
        self.claims.contains_key(&v) || self.holders.get(&v).is_some_and(|h| !h.is_empty())
    }

    /// Brings the bitmap bit of `v` in line with holdings and claims.
    fn sync_bit(&mut self, v: P::Value) {
        if !self.pool.contains(v) {
            return;
        }
        match (self.is_used(v), self.pool.has(v)) {
            (true, false) => {
                let _ = self.pool.allocate(v);
            }
            (false, true) => {
                self.pool.release(v);
            }
            _ => {}
        }
    }

    /// Replaces the bitmap's ranges (a ServiceCIDR came or went), re-marking every value held or
    /// claimed and keeping the next-fit positions of the ranges that remain.
    pub fn set_pool(&mut self, mut pool: P) {
        pool.set_cursors(&self.pool.cursors());
        self.pool = pool;
        let used: BTreeSet<P::Value> = self
            .holders
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(v, _)| *v)
            .chain(self.claims.keys().copied())
            .collect();
        for v in used {
            if self.pool.contains(v) {
                let _ = self.pool.allocate(v);
            }
        }
    }

    /// Restores next-fit positions read from the shared object.
    pub fn set_cursors(&mut self, cursors: &Cursors) {
        self.pool.set_cursors(cursors);
    }

    /// The watch saw `holder` take `v`. A live claim it fulfils ends here (the value stays used
    /// while the holder lasts).
    pub fn hold(&mut self, v: P::Value, holder: Holder, now: Timestamp) {
        let list = self.holders.entry(v).or_default();
        if !list.contains(&holder) {
            list.push(holder.clone());
        }
        if self.claims.get(&v).is_some_and(|c| fulfils(&c.owner, &holder))
            && let Some(claim) = Arc::make_mut(&mut self.claims).remove(&v)
        {
            Arc::make_mut(&mut self.fulfilled).insert(
                v,
                Fulfilled {
                    claim,
                    at: now,
                    stored: true,
                },
            );
        }
        self.sync_bit(v);
    }

    /// The watch saw `holder` let go of `v` (deleted, or changed to another value).
    pub fn unhold(&mut self, v: P::Value, holder: &Holder) {
        if let Some(list) = self.holders.get_mut(&v) {
            list.retain(|h| h != holder);
            if list.is_empty() {
                self.holders.remove(&v);
            }
        }
        self.sync_bit(v);
    }

    /// Claims `v` for `owner` until `expires`. A value already claimed for the same owner is
    /// renewed rather than refused; a value the cluster holds is refused, whoever holds it.
    pub fn claim(
        &mut self,
        v: P::Value,
        owner: &ServiceRef,
        expires: Timestamp,
    ) -> Result<Claimed, AllocError> {
        // Held by another Service (the apiserver gave it away meanwhile): no renewal helps.
        let held_by_other = self
            .holders
            .get(&v)
            .is_some_and(|hs| hs.iter().any(|h| h.service() != Some(owner)));
        if held_by_other {
            self.pool.check(v)?;
            return Err(P::taken());
        }
        // A value of this replica's own reserve, not handed out yet: the request takes it, as
        // its own claim.
        let own_reserve = self.reservations.as_ref().is_some_and(|r| {
            !r.handed.contains_key(&v) && self.claims.get(&v).is_some_and(|p| p.owner == r.owner)
        });
        if own_reserve {
            if let Some(r) = self.reservations.as_mut() {
                r.available.retain(|x| *x != v);
            }
            self.insert_claim(v, owner, expires);
            return Ok(Claimed::New);
        }
        // A reserved value this replica handed to the same Service (a retried request).
        if let Some(r) = &self.reservations
            && r.handed.get(&v) == Some(owner)
            && self.claims.get(&v).is_some_and(|p| p.owner == r.owner)
        {
            return Ok(Claimed::Renewed);
        }
        if self.claims.get(&v).is_some_and(|p| p.owner == *owner)
            && let Some(p) = Arc::make_mut(&mut self.claims).get_mut(&v)
        {
            if p.expires < expires {
                p.expires = expires;
                self.dirty = true;
            }
            return Ok(Claimed::Renewed);
        }
        if self.is_used(v) {
            // Outside the pool the pool's "not in the valid range" error comes first, as
            // upstream checks the range before the bitmap.
            self.pool.check(v)?;
            return Err(P::taken());
        }
        self.pool.allocate(v)?;
        self.insert_claim(v, owner, expires);
        Ok(Claimed::New)
    }

    /// Claims the next free value for `owner` until `expires`. With reservations, a value this
    /// replica reserved earlier is handed out without changing the shared part; when none is
    /// left, a new batch is reserved (a change to write) and the first of it handed out.
    pub fn claim_next(&mut self, owner: &ServiceRef, expires: Timestamp) -> Result<P::Value, AllocError> {
        if self.reservations.is_some() {
            return self.claim_reserved(owner, expires);
        }
        let v = self.pool.allocate_next()?;
        self.insert_claim(v, owner, expires);
        Ok(v)
    }

    /// Records a claim on a value just marked (a change to write).
    fn insert_claim(&mut self, v: P::Value, owner: &ServiceRef, expires: Timestamp) {
        if self.fulfilled.contains_key(&v) {
            Arc::make_mut(&mut self.fulfilled).remove(&v);
        }
        Arc::make_mut(&mut self.claims).insert(
            v,
            Pending {
                owner: owner.clone(),
                expires,
            },
        );
        self.dirty = true;
    }

    fn claim_reserved(&mut self, owner: &ServiceRef, expires: Timestamp) -> Result<P::Value, AllocError> {
        let free = self.pool.band_stats(Band::Dynamic).free;
        let Some(r) = self.reservations.as_mut() else {
            return Err(AllocError::Full);
        };
        let fresh_enough = expires.checked_sub(r.min_left).unwrap_or(expires);
        while let Some(v) = r.available.pop_front() {
            // Still ours and live (not lapsed, not undone, not ended by a holder the watch saw),
            // free in the cluster and inside the current pool.
            if !self.holders.contains_key(&v)
                && self.pool.contains(v)
                && self
                    .claims
                    .get(&v)
                    .is_some_and(|p| p.owner == r.owner && p.expires >= fresh_enough)
            {
                r.handed.insert(v, owner.clone());
                return Ok(v);
            }
        }
        let batch = usize::try_from(free / RESERVE_HEADROOM)
            .unwrap_or(usize::MAX)
            .clamp(1, r.batch);
        let first = self.pool.allocate_next()?;
        let mut reserved = vec![first];
        for _ in 1..batch {
            match self.pool.allocate_next() {
                Ok(v) => reserved.push(v),
                Err(_) => break,
            }
        }
        for v in &reserved {
            if self.fulfilled.contains_key(v) {
                Arc::make_mut(&mut self.fulfilled).remove(v);
            }
            Arc::make_mut(&mut self.claims).insert(
                *v,
                Pending {
                    owner: r.owner.clone(),
                    expires,
                },
            );
        }
        r.handed.insert(first, owner.clone());
        r.available.extend(reserved.into_iter().skip(1));
        self.dirty = true;
        Ok(first)
    }

    /// Undoes a claim: drops `v`'s claim if it is still `owner`'s. Returns whether it did.
    pub fn unclaim(&mut self, v: P::Value, owner: &ServiceRef) -> bool {
        if let Some(r) = self.reservations.as_mut()
            && r.handed.get(&v) == Some(owner)
        {
            // Back to this replica's reserve: nothing shared changes.
            r.handed.remove(&v);
            r.available.push_front(v);
            return true;
        }
        match self.claims.get(&v) {
            Some(p) if p.owner == *owner => {
                Arc::make_mut(&mut self.claims).remove(&v);
                self.sync_bit(v);
                self.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// Ends the claims whose TTL has passed at `now`, and the linger of fulfilled claims.
    /// Returns the lapsed claims (leaks: the admission never turned into a Service holding the
    /// value). Neither is a change to write by itself (every replica expires claims on its own
    /// clock, and the next write leaves them out); the end of a linger is remembered
    /// ([`take_linger_ended`](Self::take_linger_ended)) so that an idle writer still writes it.
    pub fn expire(&mut self, now: Timestamp) -> Vec<(P::Value, Pending)> {
        let lapsed: Vec<P::Value> = self
            .claims
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(v, _)| *v)
            .collect();
        let mut out = Vec::with_capacity(lapsed.len());
        for v in lapsed {
            if let Some(mut p) = Arc::make_mut(&mut self.claims).remove(&v) {
                // An unused reservation lapsing is no leak; a reserved value handed out to a
                // Service that never appeared is, and is reported under that Service.
                let handed = self.reservations.as_mut().and_then(|r| r.handed.remove(&v));
                if let Some(svc) = handed {
                    p.owner = svc;
                }
                if !p.owner.is_reservation() {
                    self.lapsed_count += 1;
                    if self.lapsed.len() == LAPSED_KEPT {
                        self.lapsed.pop_front();
                    }
                    self.lapsed.push_back((self.lapsed_count, v, p.clone()));
                    out.push((v, p));
                }
            }
            self.sync_bit(v);
        }
        if let Some(r) = self.reservations.as_mut() {
            let claims = &self.claims;
            r.handed.retain(|v, _| claims.contains_key(v));
            r.available.retain(|v| claims.contains_key(v));
        }
        let linger = SignedDuration::try_from(FULFILLED_LINGER).unwrap_or_default();
        let stored_now = |f: &Fulfilled| f.at.checked_add(linger).is_ok_and(|t| t > now);
        // Most calls change nothing here: the map is only written (and, while a snapshot
        // shares it, copied) when a fulfilled claim ends or stops being stored.
        let changes = self
            .fulfilled
            .values()
            .any(|f| f.claim.expires <= now || f.stored != stored_now(f));
        if changes {
            let fulfilled = Arc::make_mut(&mut self.fulfilled);
            fulfilled.retain(|_, f| f.claim.expires > now);
            for f in fulfilled.values_mut() {
                let stored = stored_now(f);
                // The linger ended: the object should stop carrying the claim, or a replica
                // that reads it only after the Service is gone would keep the value until the
                // TTL.
                self.linger_ended |= f.stored && !stored;
                f.stored = stored;
            }
        }
        out
    }

    /// Replaces the claims with those stored in the shared object (after another replica wrote,
    /// or to undo claims whose write failed). A stored claim already seen fulfilled here, or
    /// whose Service the watch already shows holding the value, does not come back to life;
    /// expired ones are dropped. Claims held here that lapsed by `now` are expired first, so
    /// they are counted as leaks rather than dropped unseen.
    pub fn replace_claims(&mut self, stored: BTreeMap<P::Value, Pending>, now: Timestamp) {
        self.expire(now);
        let before: Vec<P::Value> = self.claims.keys().copied().collect();
        self.claims = Arc::default();
        for (v, claim) in stored {
            if claim.expires <= now {
                continue;
            }
            if self.fulfilled.get(&v).is_some_and(|f| f.claim == claim) {
                continue;
            }
            let fulfilled = self
                .holders
                .get(&v)
                .is_some_and(|hs| hs.iter().any(|h| fulfils(&claim.owner, h)));
            if fulfilled {
                Arc::make_mut(&mut self.fulfilled).insert(
                    v,
                    Fulfilled {
                        claim,
                        at: now,
                        stored: true,
                    },
                );
                continue;
            }
            Arc::make_mut(&mut self.claims).insert(v, claim);
            self.sync_bit(v);
        }
        for v in before {
            self.sync_bit(v);
        }
    }

    /// The claims that lapsed after `mark` (the last ones kept), how many did, and the mark to
    /// pass next time. Reading changes nothing, so a job that runs twice reports the same.
    pub fn lapsed_since(&self, mark: u64) -> (Vec<(P::Value, Pending)>, u64, u64) {
        let list = self
            .lapsed
            .iter()
            .filter(|(n, _, _)| *n > mark)
            .map(|(_, v, p)| (*v, p.clone()))
            .collect();
        (list, self.lapsed_count.saturating_sub(mark), self.lapsed_count)
    }

    /// Whether a fulfilled claim stopped being stored since the last call: the object still
    /// carries it until the next write.
    pub fn take_linger_ended(&mut self) -> bool {
        std::mem::take(&mut self.linger_ended)
    }

    /// This replica's reservation bookkeeping, to restore when a write it made fails.
    pub fn save_reservations(&self) -> SavedReservations<P::Value> {
        SavedReservations(self.reservations.clone())
    }

    /// Puts back what [`save_reservations`](Self::save_reservations) saved.
    pub fn restore_reservations(&mut self, saved: SavedReservations<P::Value>) {
        self.reservations = saved.0;
    }

    /// The claims to store: the live ones plus those fulfilled less than [`FULFILLED_LINGER`]
    /// ago (another replica's watch may not have seen their Service yet).
    pub fn stored_claims(&self) -> BTreeMap<P::Value, Pending> {
        stored_claims(&self.claims, &self.fulfilled)
    }

    /// The claims as they are now, for [`ClaimsSnapshot::stored_claims`] later: taking it
    /// copies nothing (the maps are shared until the next change).
    pub fn snapshot_claims(&self) -> ClaimsSnapshot<P::Value> {
        ClaimsSnapshot {
            claims: Arc::clone(&self.claims),
            fulfilled: Arc::clone(&self.fulfilled),
        }
    }
}

/// The claims of a [`RangeState`] at one moment ([`RangeState::snapshot_claims`]).
#[derive(Debug, Clone)]
pub struct ClaimsSnapshot<V> {
    claims: Arc<BTreeMap<V, Pending>>,
    fulfilled: Arc<BTreeMap<V, Fulfilled>>,
}

impl<V: Ord + Copy> ClaimsSnapshot<V> {
    /// What [`RangeState::stored_claims`] answered when the snapshot was taken.
    pub fn stored_claims(&self) -> BTreeMap<V, Pending> {
        stored_claims(&self.claims, &self.fulfilled)
    }
}

/// The live claims plus those fulfilled less than [`FULFILLED_LINGER`] ago.
fn stored_claims<V: Ord + Copy>(
    claims: &BTreeMap<V, Pending>,
    fulfilled: &BTreeMap<V, Fulfilled>,
) -> BTreeMap<V, Pending> {
    let mut out = claims.clone();
    for (v, f) in fulfilled.iter().filter(|(_, f)| f.stored) {
        out.entry(*v).or_insert_with(|| f.claim.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_allocators::PortRange;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    fn state(lo: u16, hi: u16) -> RangeState<PortAllocator> {
        RangeState::new(PortAllocator::new(PortRange::new(lo, hi).expect("range")))
    }

    fn svc(name: &str) -> Holder {
        Holder::Service(ServiceRef::new("ns", name))
    }

    #[test]
    fn claims_are_idempotent_per_owner_and_exclusive_across_owners() {
        let mut s = state(30000, 30009);
        let a = ServiceRef::new("ns", "a");
        let b = ServiceRef::new("ns", "b");
        assert_eq!(s.claim(30001, &a, ts(10)), Ok(Claimed::New));
        assert!(s.is_dirty());
        s.clear_dirty();
        assert_eq!(s.claim(30001, &a, ts(5)), Ok(Claimed::Renewed));
        assert!(!s.is_dirty(), "an earlier expiry does not shorten the claim");
        assert_eq!(s.claim(30001, &a, ts(20)), Ok(Claimed::Renewed));
        assert_eq!(s.pending()[&30001].expires, ts(20));
        assert_eq!(s.claim(30001, &b, ts(20)), Err(AllocError::PortAllocated));
        assert!(!s.unclaim(30001, &b));
        assert!(s.unclaim(30001, &a));
        assert!(!s.pool().has(30001));
        assert_eq!(
            s.claim(40000, &a, ts(20)).map_err(|e| e.to_string()),
            Err(
                "provided port is not in the valid range. The range of valid ports is 30000-30009".to_owned()
            )
        );
    }

    #[test]
    fn a_snapshot_keeps_the_claims_of_its_moment() {
        let mut s = state(30000, 30009).with_reservations("r1", 4, Duration::from_secs(30));
        let a = ServiceRef::new("ns", "a");
        assert_eq!(s.claim(30001, &a, ts(30)), Ok(Claimed::New));
        s.hold(30001, svc("a"), ts(1));
        let first = s
            .claim_next(&ServiceRef::new("ns", "b"), ts(30))
            .expect("a value");
        let before = s.stored_claims();
        let snapshot = s.snapshot_claims();
        // Every kind of change after it: a new claim, a reserved value handed out, a claim
        // fulfilled, an undone claim, claims and lingers expiring.
        assert_eq!(
            s.claim(30008, &ServiceRef::new("ns", "c"), ts(30)),
            Ok(Claimed::New)
        );
        let second = s
            .claim_next(&ServiceRef::new("ns", "d"), ts(30))
            .expect("a value");
        s.hold(second, svc("d"), ts(2));
        assert!(s.unclaim(first, &ServiceRef::new("ns", "b")));
        s.expire(ts(1 + FULFILLED_LINGER.as_secs() as i64 + 1));
        assert_ne!(s.stored_claims(), before);
        assert_eq!(snapshot.stored_claims(), before);
        s.expire(ts(31));
        assert_eq!(snapshot.stored_claims(), before);
    }

    #[test]
    fn a_value_is_free_the_moment_its_last_holder_goes() {
        let mut s = state(30000, 30009);
        s.hold(30005, svc("web"), ts(0));
        s.hold(30005, svc("dup"), ts(0));
        assert_eq!(
            s.claim(30005, &ServiceRef::new("ns", "new"), ts(60)),
            Err(AllocError::PortAllocated)
        );
        s.unhold(30005, &svc("web"));
        assert!(s.pool().has(30005), "still held by the second Service");
        s.unhold(30005, &svc("dup"));
        assert!(!s.pool().has(30005));
        assert_eq!(
            s.claim(30005, &ServiceRef::new("ns", "new"), ts(60)),
            Ok(Claimed::New)
        );
    }

    #[test]
    fn a_fulfilled_claim_does_not_outlive_its_service() {
        let mut s = state(30000, 30009);
        let web = ServiceRef::new("ns", "web");
        assert_eq!(s.claim(30003, &web, ts(30)), Ok(Claimed::New));
        s.hold(30003, svc("web"), ts(1));
        assert!(s.pending().is_empty(), "the claim is fulfilled");
        assert!(
            s.stored_claims().contains_key(&30003),
            "but stays stored for other replicas"
        );
        // A reload of the object that still carries the claim does not revive it.
        let stored = s.stored_claims();
        s.replace_claims(stored.clone(), ts(2));
        assert!(s.pending().is_empty());
        s.unhold(30003, &svc("web"));
        assert!(
            !s.pool().has(30003),
            "deleted Service: free at once, not at the claim's expiry"
        );
        s.expire(ts(1 + FULFILLED_LINGER.as_secs() as i64));
        assert!(s.stored_claims().is_empty(), "no longer stored after the linger");
        // Another replica's copy of the object still carries it: it stays dead here.
        s.replace_claims(stored, ts(20));
        assert!(
            s.pending().is_empty(),
            "a fulfilled claim read back after the linger is not revived"
        );
        assert!(!s.pool().has(30003));
    }

    #[test]
    fn generate_name_claims_are_fulfilled_by_any_service_of_the_namespace() {
        let mut s = state(30000, 30009);
        s.claim(30002, &ServiceRef::new("ns", ""), ts(30)).expect("free");
        s.hold(30002, Holder::Service(ServiceRef::new("other", "x")), ts(1));
        assert_eq!(
            s.pending().len(),
            1,
            "another namespace's Service does not fulfil it"
        );
        s.hold(30002, svc("web-x7k2"), ts(1));
        assert!(s.pending().is_empty());
    }

    #[test]
    fn claims_lapse_at_their_ttl_and_a_reload_restores_the_shared_set() {
        let mut s = state(30000, 30009);
        let a = ServiceRef::new("ns", "a");
        let v = s.claim_next(&a, ts(30)).expect("free");
        assert!(s.expire(ts(29)).is_empty());
        assert_eq!(
            s.expire(ts(30)),
            vec![(
                v,
                Pending {
                    owner: a.clone(),
                    expires: ts(30)
                }
            )]
        );
        assert!(!s.pool().has(v));
        // Another replica's claims arrive with a reload; our unwritten claim is undone by it.
        let mine = s.claim_next(&a, ts(60)).expect("free");
        let theirs: BTreeMap<i32, Pending> = [(
            30009,
            Pending {
                owner: ServiceRef::new("ns", "b"),
                expires: ts(60),
            },
        )]
        .into();
        s.replace_claims(theirs, ts(31));
        assert!(!s.pool().has(mine));
        assert!(s.pool().has(30009));
        assert_eq!(s.claim(30009, &a, ts(60)), Err(AllocError::PortAllocated));
    }

    /// A repair report whose status write failed is not replaced by the older one read back.
    #[test]
    fn an_unwritten_repair_report_survives_a_reload_of_an_older_one() {
        let mut s = state(30000, 30009);
        let report = |time: &str| RepairSummary {
            time: time.into(),
            ..Default::default()
        };
        s.record_repair(report("2026-12-05T03:00:10Z"));
        s.set_last_repair(Some(report("2026-12-05T03:00:00Z")));
        assert_eq!(
            s.last_repair().map(|r| r.time.as_str()),
            Some("2026-12-05T03:00:10Z")
        );
        s.set_last_repair(None);
        assert!(s.last_repair().is_some());
        s.set_last_repair(Some(report("2026-12-05T03:01:00Z")));
        assert_eq!(
            s.last_repair().map(|r| r.time.as_str()),
            Some("2026-12-05T03:01:00Z")
        );
    }

    /// A claim of ours that lapses while another version of the object comes in is a leak
    /// all the same: the reload must not drop it uncounted (the repair's `leaked` and the
    /// leak metrics under-counted whenever a watch event beat the idle tick).
    #[test]
    fn a_claim_that_lapsed_before_a_reload_is_counted_as_a_leak() {
        let mut s = state(30000, 30009);
        let a = ServiceRef::new("ns", "a");
        let v = s.claim_next(&a, ts(30)).expect("free");
        let stored: BTreeMap<i32, Pending> = [(
            v,
            Pending {
                owner: a.clone(),
                expires: ts(30),
            },
        )]
        .into();
        s.replace_claims(stored, ts(31));
        let (lapsed, count, _) = s.lapsed_since(0);
        assert_eq!(count, 1);
        assert_eq!(lapsed[0].0, v);
        assert!(!s.pool().has(v));
    }

    #[test]
    fn a_claim_of_another_replica_stays_live_until_a_holder_ends_it() {
        // Replica A claimed 30004 for new right after old let go of it; this replica saw old
        // go only later. The claim stays (another value is handed out meanwhile).
        let mut s = state(30000, 30009);
        s.hold(30004, svc("old"), ts(10));
        let theirs: BTreeMap<i32, Pending> = [(
            30004,
            Pending {
                owner: ServiceRef::new("ns", "new"),
                expires: ts(40),
            },
        )]
        .into();
        s.unhold(30004, &svc("old"));
        s.replace_claims(theirs, ts(13));
        assert_eq!(s.pending().len(), 1, "still claimed for new");
        assert_eq!(
            s.claim(30004, &ServiceRef::new("ns", "other"), ts(50)),
            Err(AllocError::PortAllocated)
        );
        // A parentless IPAddress (another manager's reservation) ends a reservation too.
        let mut s = state(30000, 30009);
        let reserved: BTreeMap<i32, Pending> = [(
            30005,
            Pending {
                owner: ServiceRef::reservation("a"),
                expires: ts(40),
            },
        )]
        .into();
        s.replace_claims(reserved, ts(1));
        s.hold(30005, Holder::Address { parent: None }, ts(2));
        assert!(s.pending().is_empty());
        s.unhold(30005, &Holder::Address { parent: None });
        assert!(!s.pool().has(30005));
    }

    #[test]
    fn the_end_of_a_linger_is_remembered_for_the_next_write() {
        let mut s = state(30000, 30009);
        let web = ServiceRef::new("ns", "web");
        s.claim(30002, &web, ts(60)).expect("free");
        s.hold(30002, Holder::Service(web), ts(1));
        s.expire(ts(2));
        assert!(!s.take_linger_ended(), "still lingering");
        s.expire(ts(1 + FULFILLED_LINGER.as_secs() as i64));
        assert!(s.take_linger_ended(), "the object must drop it now");
        assert!(!s.take_linger_ended(), "once");
        assert!(s.stored_claims().is_empty());
    }

    #[test]
    fn a_new_pool_keeps_what_is_held_and_claimed() {
        let mut s = state(30000, 30009);
        s.hold(30011, svc("outside"), ts(0));
        s.claim(30001, &ServiceRef::new("ns", "a"), ts(30)).expect("free");
        s.set_pool(PortAllocator::new(PortRange::new(30000, 30019).expect("range")));
        assert!(s.pool().has(30011), "held before the range grew to cover it");
        assert!(s.pool().has(30001));
        assert_eq!(s.pool().held(), vec![30001, 30011]);
    }

    fn reserving(lo: u16, hi: u16) -> RangeState<PortAllocator> {
        state(lo, hi).with_reservations("r1", 4, Duration::from_secs(30))
    }

    #[test]
    fn reservations_answer_most_requests_without_a_shared_write() {
        // 30000-32767: 2,682 free in the dynamic band, room for batches of 4.
        let mut s = reserving(30000, 32767);
        let web = |i: i32| ServiceRef::new("ns", format!("web{i}"));
        let mut got = Vec::new();
        let mut writes = 0;
        for i in 0..9 {
            s.clear_dirty();
            got.push(s.claim_next(&web(i), ts(100)).expect("free"));
            writes += usize::from(s.is_dirty());
        }
        assert_eq!(writes, 3, "one shared write per batch of 4");
        assert_eq!(got, (30086..30095).collect::<Vec<_>>(), "next-fit order");
        assert_eq!(s.pending().len(), 12, "9 handed out, 3 in reserve");
        assert!(
            s.pending()
                .values()
                .all(|p| p.owner == ServiceRef::reservation("r1"))
        );
        assert_eq!(
            s.claim(30086, &web(0), ts(100)),
            Ok(Claimed::Renewed),
            "a retried request"
        );
        assert_eq!(s.claim(30086, &web(1), ts(100)), Err(AllocError::PortAllocated));
        // A value of the reserve not handed out yet is this replica's to give: an explicit
        // request takes it, as upstream would accept it.
        assert_eq!(s.claim(30095, &web(20), ts(100)), Ok(Claimed::New));
        assert_eq!(s.pending()[&30095].owner, web(20));
        assert_ne!(
            s.claim_next(&web(21), ts(100)),
            Ok(30095),
            "no longer in the reserve"
        );
        // Handed back (a later range refused the request): the next request gets it.
        assert!(s.unclaim(30094, &web(8)));
        assert_eq!(s.claim_next(&web(9), ts(100)), Ok(30094));
        // A failed write restores the reserve as it was.
        let saved = s.save_reservations();
        let taken = s.claim_next(&web(10), ts(100)).expect("free");
        s.restore_reservations(saved);
        assert_eq!(
            s.claim_next(&web(11), ts(100)),
            Ok(taken),
            "the same value again, not a leak"
        );
    }

    #[test]
    fn a_reserved_value_the_cluster_takes_is_skipped_and_freed_with_its_holder() {
        let mut s = reserving(30000, 32767);
        let a = ServiceRef::new("ns", "a");
        assert_eq!(s.claim_next(&a, ts(100)), Ok(30086));
        // kube-system's Service takes a reserved, not yet handed-out value, as the apiserver may.
        s.hold(30087, svc("system"), ts(1));
        assert_eq!(s.claim_next(&ServiceRef::new("ns", "b"), ts(100)), Ok(30088));
        s.unhold(30087, &svc("system"));
        assert!(
            !s.pool().has(30087),
            "the reservation ended with the hold: free at once"
        );
        // The handed-out value is fulfilled by its Service and free when it goes.
        s.hold(30086, Holder::Service(a.clone()), ts(2));
        s.unhold(30086, &Holder::Service(a));
        assert!(!s.pool().has(30086));
    }

    #[test]
    fn unused_reservations_lapse_quietly_and_handed_ones_as_leaks_of_their_service() {
        let mut s = reserving(30000, 32767);
        let a = ServiceRef::new("ns", "a");
        assert_eq!(s.claim_next(&a, ts(100)), Ok(30086));
        let lapsed = s.expire(ts(100));
        assert_eq!(
            lapsed,
            vec![(
                30086,
                Pending {
                    owner: a,
                    expires: ts(100)
                }
            )]
        );
        assert!(s.pending().is_empty() && s.pool().held().is_empty());
        assert_eq!(s.lapsed_since(0).1, 1);
        assert_eq!(s.lapsed_since(1).1, 0, "nothing new after the mark");
        // A reserved value is not handed out with less than half its TTL left.
        let b = ServiceRef::new("ns", "b");
        assert_eq!(s.claim_next(&b, ts(100)), Ok(30090));
        assert_eq!(
            s.claim_next(&b, ts(200)),
            Ok(30094),
            "the reserve (expiring at 100) is too old for 200"
        );
    }

    #[test]
    fn a_nearly_full_band_is_claimed_one_value_at_a_time() {
        let mut s = reserving(30000, 30099);
        s.claim_next(&ServiceRef::new("ns", "a"), ts(100)).expect("free");
        assert_eq!(s.pending().len(), 2, "84 free: one reserved per 32 free, 2");
        let mut s = reserving(30000, 30039);
        s.claim_next(&ServiceRef::new("ns", "a"), ts(100)).expect("free");
        assert_eq!(
            s.pending().len(),
            1,
            "24 free: no reservation beyond the value asked for"
        );
    }

    #[test]
    fn generate_name_claims_match_any_service_of_the_namespace() {
        let any = ServiceRef::new("ns", "");
        assert!(any.is_fulfilled_by(&ServiceRef::new("ns", "web-x7k2")));
        assert!(!any.is_fulfilled_by(&ServiceRef::new("other", "web")));
        let named = ServiceRef::new("ns", "web");
        assert!(named.is_fulfilled_by(&ServiceRef::new("ns", "web")));
        assert!(!named.is_fulfilled_by(&ServiceRef::new("ns", "api")));
        assert_eq!("ns/web".parse::<ServiceRef>(), Ok(named.clone()));
        assert_eq!(named.to_string(), "ns/web");
    }
}
