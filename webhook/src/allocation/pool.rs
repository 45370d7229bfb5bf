//! The state of one range: an allocator plus the values handed out in admissions whose Service
//! has not been seen yet (pending claims). Pure: no I/O, no clock.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;

use super::crd::RepairSummary;
use k8s_openapi::jiff::Timestamp;
use portico_allocators::{AllocError, Band, BandStats, IpAllocator, PortAllocator, Snapshot, SnapshotError};

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

/// The allocator operations a range store needs, implemented for [`IpAllocator`] and
/// [`PortAllocator`].
pub trait Pool: Clone + fmt::Debug + Send + Sync + 'static {
    /// An address or a port number.
    type Value: Copy + Ord + Hash + fmt::Display + fmt::Debug + FromStr + Send + Sync + 'static;
    /// What the range holds.
    const KIND: RangeKind;

    /// An empty allocator over the same range.
    fn empty_like(&self) -> Self;
    /// The range as stored in snapshots (`10.96.0.0/16`, `30000-32767`).
    fn range_string(&self) -> String;
    /// Whether `v` lies in the allocatable part of the range.
    fn contains(&self, v: Self::Value) -> bool;
    /// Whether `v` is held.
    fn has(&self, v: Self::Value) -> bool;
    /// Takes `v`.
    fn allocate(&mut self, v: Self::Value) -> Result<(), AllocError>;
    /// Takes the next free value (dynamic band first).
    fn allocate_next(&mut self) -> Result<Self::Value, AllocError>;
    /// Frees `v`; whether it was held.
    fn release(&mut self, v: Self::Value) -> bool;
    /// Held values, ascending.
    fn held(&self) -> Vec<Self::Value>;
    /// Occupancy of a band.
    fn band_stats(&self, band: Band) -> BandStats;
    /// Number of allocatable values.
    fn size(&self) -> u64;
    /// Number of held values.
    fn used(&self) -> u64;
    /// The stored form.
    fn snapshot(&self) -> Snapshot;
    /// Replaces the held set with the snapshot's.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError>;
}

impl Pool for IpAllocator {
    type Value = IpAddr;
    const KIND: RangeKind = RangeKind::ClusterIp;

    fn empty_like(&self) -> Self {
        IpAllocator::new(*self.range())
    }
    fn range_string(&self) -> String {
        self.range().to_string()
    }
    fn contains(&self, v: IpAddr) -> bool {
        self.range().contains(v)
    }
    fn has(&self, v: IpAddr) -> bool {
        IpAllocator::has(self, v)
    }
    fn allocate(&mut self, v: IpAddr) -> Result<(), AllocError> {
        IpAllocator::allocate(self, v)
    }
    fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        IpAllocator::allocate_next(self)
    }
    fn release(&mut self, v: IpAddr) -> bool {
        IpAllocator::release(self, v)
    }
    fn held(&self) -> Vec<IpAddr> {
        self.iter().collect()
    }
    fn band_stats(&self, band: Band) -> BandStats {
        IpAllocator::band_stats(self, band)
    }
    fn size(&self) -> u64 {
        IpAllocator::size(self)
    }
    fn used(&self) -> u64 {
        IpAllocator::used(self)
    }
    fn snapshot(&self) -> Snapshot {
        IpAllocator::snapshot(self)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        IpAllocator::restore(self, snapshot)
    }
}

impl Pool for PortAllocator {
    type Value = i32;
    const KIND: RangeKind = RangeKind::NodePort;

    fn empty_like(&self) -> Self {
        PortAllocator::new(*self.range())
    }
    fn range_string(&self) -> String {
        self.range().to_string()
    }
    fn contains(&self, v: i32) -> bool {
        self.range().contains(v)
    }
    fn has(&self, v: i32) -> bool {
        PortAllocator::has(self, v)
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
    fn size(&self) -> u64 {
        PortAllocator::size(self)
    }
    fn used(&self) -> u64 {
        PortAllocator::used(self)
    }
    fn snapshot(&self) -> Snapshot {
        PortAllocator::snapshot(self)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        PortAllocator::restore(self, snapshot)
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

    /// Whether a claim made for `self` is fulfilled by the Service `other`.
    pub fn is_fulfilled_by(&self, other: &ServiceRef) -> bool {
        self.namespace == other.namespace && (self.name.is_empty() || self.name == other.name)
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

/// A value handed out in an admission and not yet seen on its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The Service it was handed to.
    pub owner: ServiceRef,
    /// When the repair loop may free it if the Service still does not hold it.
    pub expires: Timestamp,
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The value was free and is now held.
    New,
    /// The value was already pending for the same Service (a re-invoked webhook, a retried
    /// request): its expiry was extended.
    Renewed,
}

/// One range's allocator plus its pending claims; tracks whether anything changed.
#[derive(Debug, Clone)]
pub struct RangeState<P: Pool> {
    pool: P,
    pending: BTreeMap<P::Value, Pending>,
    /// Carried through every write, so admissions never erase the repair loop's report.
    last_repair: Option<RepairSummary>,
    dirty: bool,
}

impl<P: Pool> RangeState<P> {
    /// A state with nothing pending.
    pub fn new(pool: P) -> Self {
        RangeState {
            pool,
            pending: BTreeMap::new(),
            last_repair: None,
            dirty: false,
        }
    }

    /// A state restored from stored parts.
    pub fn from_parts(pool: P, pending: BTreeMap<P::Value, Pending>) -> Self {
        RangeState {
            pool,
            pending,
            last_repair: None,
            dirty: false,
        }
    }

    /// The allocator.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The pending claims by value.
    pub fn pending(&self) -> &BTreeMap<P::Value, Pending> {
        &self.pending
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
    pub fn with_last_repair(mut self, summary: Option<RepairSummary>) -> Self {
        self.last_repair = summary;
        self
    }

    /// Whether a mutating call changed anything since the last [`clear_dirty`](Self::clear_dirty).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Forgets about earlier changes.
    pub fn clear_dirty(&mut self) {
        self.dirty = false;
    }

    /// Takes `v` for `owner` until `expires`. A value already pending for the same owner is
    /// renewed rather than refused.
    pub fn claim(
        &mut self,
        v: P::Value,
        owner: &ServiceRef,
        expires: Timestamp,
    ) -> Result<Claimed, AllocError> {
        if let Some(p) = self.pending.get_mut(&v)
            && p.owner == *owner
            && self.pool.has(v)
        {
            if p.expires < expires {
                p.expires = expires;
                self.dirty = true;
            }
            return Ok(Claimed::Renewed);
        }
        self.pool.allocate(v)?;
        self.pending.insert(
            v,
            Pending {
                owner: owner.clone(),
                expires,
            },
        );
        self.dirty = true;
        Ok(Claimed::New)
    }

    /// Takes the next free value for `owner` until `expires`.
    pub fn claim_next(&mut self, owner: &ServiceRef, expires: Timestamp) -> Result<P::Value, AllocError> {
        let v = self.pool.allocate_next()?;
        self.pending.insert(
            v,
            Pending {
                owner: owner.clone(),
                expires,
            },
        );
        self.dirty = true;
        Ok(v)
    }

    /// Undoes a claim: frees `v` if it is still pending for `owner`. Returns whether it did.
    pub fn unclaim(&mut self, v: P::Value, owner: &ServiceRef) -> bool {
        match self.pending.get(&v) {
            Some(p) if p.owner == *owner => {
                self.pending.remove(&v);
                self.pool.release(v);
                self.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// Marks `v` as held without a pending claim (a Service holds it). `Ok(true)` if it was free.
    pub fn mark(&mut self, v: P::Value) -> Result<bool, AllocError> {
        if self.pool.has(v) {
            return Ok(false);
        }
        self.pool.allocate(v)?;
        self.dirty = true;
        Ok(true)
    }

    /// Frees `v` and drops its pending claim. Returns whether it was held.
    pub fn release(&mut self, v: P::Value) -> bool {
        let had_pending = self.pending.remove(&v).is_some();
        let released = self.pool.release(v);
        self.dirty |= had_pending || released;
        released
    }

    /// Drops the pending claim of `v`, keeping the value held (its Service appeared).
    pub fn confirm(&mut self, v: P::Value) -> bool {
        let removed = self.pending.remove(&v).is_some();
        self.dirty |= removed;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_allocators::PortRange;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn claims_are_idempotent_per_owner_and_exclusive_across_owners() {
        let mut s = RangeState::new(PortAllocator::new(PortRange::new(30000, 30009).expect("range")));
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
        let next = s.claim_next(&b, ts(1)).expect("free");
        assert!(s.confirm(next));
        assert!(s.pending().is_empty());
        assert!(s.pool().has(next));
        assert_eq!(s.mark(next), Ok(false));
        assert_eq!(s.mark(30009), Ok(true));
        assert!(s.release(30009));
        assert!(!s.release(30009));
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
