//! Property tests: every allocator (IPv4, IPv6, ports) against a set-based model.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::IpAddr;

use ipnet::IpNet;
use portico_allocators::{
    AllocError, Band, BandStats, IpAllocator, IpRange, PortAllocator, PortRange, Snapshot, SnapshotError,
};
use proptest::prelude::*;

/// What the properties need from an allocator, so one model drives IPs and ports alike.
trait Subject: Clone + Debug {
    type V: Copy + Ord + Debug;
    fn size(&self) -> u64;
    /// The value at `k` for `k < size`, an out-of-range value otherwise.
    fn value(&self, k: u64) -> Self::V;
    fn allocate(&mut self, v: Self::V) -> Result<(), AllocError>;
    fn check_allocate(&self, v: Self::V) -> Result<(), AllocError>;
    fn allocate_next(&mut self) -> Result<Self::V, AllocError>;
    fn peek_next(&self) -> Result<Self::V, AllocError>;
    fn release(&mut self, v: Self::V) -> bool;
    fn has(&self, v: Self::V) -> bool;
    fn used(&self) -> u64;
    fn free(&self) -> u64;
    fn band_of(&self, v: Self::V) -> Option<Band>;
    fn band_stats(&self, band: Band) -> BandStats;
    fn held(&self) -> Vec<Self::V>;
    fn snapshot(&self) -> Snapshot;
    fn restored(&self, snapshot: &Snapshot) -> Result<Self, SnapshotError>;
    fn same_state(&self, other: &Self) -> bool;
    fn allocated_error(&self) -> AllocError;
}

impl Subject for IpAllocator {
    type V = IpAddr;
    fn size(&self) -> u64 {
        IpAllocator::size(self)
    }
    fn value(&self, k: u64) -> IpAddr {
        let r = self.range();
        match u32::try_from(k).ok().and_then(|k| r.ip_at(k)) {
            Some(ip) => ip,
            // The network address is never allocatable; neither is the other family.
            None if k.is_multiple_of(2) => r.cidr().network(),
            None if r.cidr().addr().is_ipv4() => "2001:db8::1".parse().expect("literal"),
            None => "192.0.2.1".parse().expect("literal"),
        }
    }
    fn allocate(&mut self, v: IpAddr) -> Result<(), AllocError> {
        IpAllocator::allocate(self, v)
    }
    fn check_allocate(&self, v: IpAddr) -> Result<(), AllocError> {
        IpAllocator::check_allocate(self, v)
    }
    fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        IpAllocator::allocate_next(self)
    }
    fn peek_next(&self) -> Result<IpAddr, AllocError> {
        IpAllocator::peek_next(self)
    }
    fn release(&mut self, v: IpAddr) -> bool {
        IpAllocator::release(self, v)
    }
    fn has(&self, v: IpAddr) -> bool {
        IpAllocator::has(self, v)
    }
    fn used(&self) -> u64 {
        IpAllocator::used(self)
    }
    fn free(&self) -> u64 {
        IpAllocator::free(self)
    }
    fn band_of(&self, v: IpAddr) -> Option<Band> {
        IpAllocator::band_of(self, v)
    }
    fn band_stats(&self, band: Band) -> BandStats {
        IpAllocator::band_stats(self, band)
    }
    fn held(&self) -> Vec<IpAddr> {
        self.iter().collect()
    }
    fn snapshot(&self) -> Snapshot {
        IpAllocator::snapshot(self)
    }
    fn restored(&self, snapshot: &Snapshot) -> Result<Self, SnapshotError> {
        IpAllocator::from_snapshot(*self.range(), snapshot)
    }
    fn same_state(&self, other: &Self) -> bool {
        IpAllocator::same_state(self, other)
    }
    fn allocated_error(&self) -> AllocError {
        AllocError::IpAllocated
    }
}

impl Subject for PortAllocator {
    type V = i32;
    fn size(&self) -> u64 {
        PortAllocator::size(self)
    }
    fn value(&self, k: u64) -> i32 {
        let r = self.range();
        if k < self.size() {
            i32::from(r.first()) + k as i32
        } else if k.is_multiple_of(2) {
            i32::from(r.first()) - 1
        } else {
            i32::from(r.last()) + 1
        }
    }
    fn allocate(&mut self, v: i32) -> Result<(), AllocError> {
        PortAllocator::allocate(self, v)
    }
    fn check_allocate(&self, v: i32) -> Result<(), AllocError> {
        PortAllocator::check_allocate(self, v)
    }
    fn allocate_next(&mut self) -> Result<i32, AllocError> {
        PortAllocator::allocate_next(self)
    }
    fn peek_next(&self) -> Result<i32, AllocError> {
        PortAllocator::peek_next(self)
    }
    fn release(&mut self, v: i32) -> bool {
        PortAllocator::release(self, v)
    }
    fn has(&self, v: i32) -> bool {
        PortAllocator::has(self, v)
    }
    fn used(&self) -> u64 {
        PortAllocator::used(self)
    }
    fn free(&self) -> u64 {
        PortAllocator::free(self)
    }
    fn band_of(&self, v: i32) -> Option<Band> {
        PortAllocator::band_of(self, v)
    }
    fn band_stats(&self, band: Band) -> BandStats {
        PortAllocator::band_stats(self, band)
    }
    fn held(&self) -> Vec<i32> {
        self.iter().collect()
    }
    fn snapshot(&self) -> Snapshot {
        PortAllocator::snapshot(self)
    }
    fn restored(&self, snapshot: &Snapshot) -> Result<Self, SnapshotError> {
        PortAllocator::from_snapshot(*self.range(), snapshot)
    }
    fn same_state(&self, other: &Self) -> bool {
        PortAllocator::same_state(self, other)
    }
    fn allocated_error(&self) -> AllocError {
        AllocError::PortAllocated
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Next,
    /// Allocate the value at `k` (reduced modulo size + 2, so sometimes out of range).
    Allocate(u64),
    /// Release the value at `k` (same reduction).
    Release(u64),
    /// Release the `k`-th held value, if any.
    ReleaseHeld(usize),
    /// Release then re-allocate the `k`-th held value.
    RoundTrip(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Next),
        2 => any::<u64>().prop_map(Op::Allocate),
        1 => any::<u64>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::ReleaseHeld),
        1 => any::<usize>().prop_map(Op::RoundTrip),
    ]
}

/// Runs `ops` against `subject` and a `BTreeSet` model, checking every property after each step.
fn run<S: Subject>(mut subject: S, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model: BTreeSet<S::V> = BTreeSet::new();
    let size = subject.size();
    let pick = |k: u64| k % (size + 2);
    for &op in ops {
        match op {
            Op::Next => {
                let dynamic_free = subject.band_stats(Band::Dynamic).free;
                let peeked = subject.peek_next();
                let got = subject.allocate_next();
                prop_assert_eq!(&peeked, &got, "peek_next must predict allocate_next");
                match got {
                    Ok(v) => {
                        prop_assert!(model.insert(v), "{:?} handed out twice", v);
                        let band = subject.band_of(v);
                        prop_assert!(band.is_some(), "{:?} is outside the range", v);
                        if band == Some(Band::Static) {
                            prop_assert_eq!(dynamic_free, 0, "took static {:?} with dynamic ones free", v);
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e, AllocError::Full);
                        prop_assert_eq!(model.len() as u64, size);
                    }
                }
            }
            Op::Allocate(k) => {
                let v = subject.value(pick(k));
                let dry = subject.check_allocate(v);
                let got = subject.allocate(v);
                prop_assert_eq!(&dry, &got, "check_allocate must predict allocate");
                match (subject.band_of(v), model.contains(&v)) {
                    (None, _) => prop_assert!(
                        matches!(
                            got,
                            Err(AllocError::IpNotInRange { .. } | AllocError::PortNotInRange { .. })
                        ),
                        "{:?}: {:?}",
                        v,
                        got
                    ),
                    (Some(_), true) => prop_assert_eq!(got, Err(subject.allocated_error())),
                    (Some(_), false) => {
                        prop_assert_eq!(got, Ok(()));
                        model.insert(v);
                    }
                }
            }
            Op::Release(k) => {
                let v = subject.value(pick(k));
                prop_assert_eq!(subject.release(v), model.remove(&v));
            }
            Op::ReleaseHeld(i) => {
                if let Some(&v) = model.iter().nth(i % model.len().max(1)) {
                    prop_assert!(subject.release(v));
                    prop_assert!(!subject.has(v));
                    model.remove(&v);
                }
            }
            Op::RoundTrip(i) => {
                if let Some(&v) = model.iter().nth(i % model.len().max(1)) {
                    let before = subject.clone();
                    prop_assert!(subject.release(v));
                    prop_assert!(!subject.has(v));
                    prop_assert_eq!(subject.used() + 1, before.used());
                    prop_assert_eq!(subject.allocate(v), Ok(()));
                    prop_assert!(
                        subject.same_state(&before),
                        "release + allocate of {:?} changed state",
                        v
                    );
                }
            }
        }
        let (st, dy) = (
            subject.band_stats(Band::Static),
            subject.band_stats(Band::Dynamic),
        );
        prop_assert_eq!(subject.used() + subject.free(), size);
        prop_assert_eq!(subject.used(), model.len() as u64);
        prop_assert_eq!(st.used + st.free, st.size);
        prop_assert_eq!(dy.used + dy.free, dy.size);
        prop_assert_eq!((st.size + dy.size, st.used + dy.used), (size, subject.used()));
    }
    let held = subject.held();
    prop_assert!(
        held.iter().copied().eq(model.iter().copied()),
        "iteration is ascending and complete"
    );
    prop_assert!(held.iter().all(|v| subject.has(*v)));

    let snap = subject.snapshot();
    let restored = subject.restored(&snap)?;
    prop_assert!(restored.same_state(&subject));
    prop_assert_eq!(&restored.held(), &held);
    for band in [Band::Static, Band::Dynamic] {
        prop_assert_eq!(restored.band_stats(band), subject.band_stats(band));
    }
    let via_bytes = Snapshot::from_bytes(&snap.to_bytes())?;
    prop_assert_eq!(&via_bytes, &snap);
    let json = serde_json::to_string(&snap).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let via_json: Snapshot = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(subject.restored(&via_json)?.same_state(&subject));
    // A restored allocator keeps allocating without duplicates.
    let mut restored = restored;
    let mut seen: BTreeSet<S::V> = held.into_iter().collect();
    while let Ok(v) = restored.allocate_next() {
        prop_assert!(seen.insert(v), "{:?} handed out twice after restore", v);
        if seen.len() > 300 {
            break;
        }
    }
    Ok(())
}

fn ipv4_range() -> impl Strategy<Value = IpRange> {
    (any::<u32>(), 20u8..=32).prop_map(|(a, p)| {
        IpRange::new(IpNet::new(IpAddr::from(a.to_be_bytes()), p).expect("valid prefix")).expect("v4 fits")
    })
}

fn ipv6_range() -> impl Strategy<Value = IpRange> {
    (any::<u128>(), prop_oneof![96u8..=98, 108u8..=128]).prop_map(|(a, p)| {
        IpRange::new(IpNet::new(IpAddr::from(a.to_be_bytes()), p).expect("valid prefix"))
            .expect("<= /96 fits")
    })
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), prop_oneof![0u16..40, 0u16..600, 0u16..=u16::MAX]).prop_map(|(first, len)| {
        let last = first.saturating_add(len);
        PortRange::new(first, last).expect("ordered")
    })
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ipv4_allocator_matches_model(range in ipv4_range(), ops in ops()) {
        run(IpAllocator::new(range), &ops)?;
    }

    #[test]
    fn ipv6_allocator_matches_model(range in ipv6_range(), ops in ops()) {
        run(IpAllocator::new(range), &ops)?;
    }

    #[test]
    fn port_allocator_matches_model(range in port_range(), ops in ops()) {
        run(PortAllocator::new(range), &ops)?;
    }

    /// Fill to exhaustion with holes punched at random: still no duplicates, and the static band
    /// is only used once the dynamic one is full.
    #[test]
    fn fill_release_refill(prefix in 22u8..=28, holes in proptest::collection::vec(any::<usize>(), 0..50)) {
        let range = IpRange::new(IpNet::new("10.0.0.0".parse().expect("literal"), prefix).expect("prefix"))
            .expect("fits");
        let mut ops = vec![Op::Next; range.size() as usize + 2];
        ops.extend(holes.iter().map(|h| Op::ReleaseHeld(*h)));
        ops.extend(std::iter::repeat_n(Op::Next, holes.len() + 2));
        run(IpAllocator::new(range), &ops)?;
    }

    /// Restoring into any other range is refused, never reinterpreted.
    #[test]
    fn restore_into_another_range_fails(a in ipv4_range(), b in ipv4_range(), p in port_range(), q in port_range()) {
        let snap = IpAllocator::new(a).snapshot();
        let res = IpAllocator::from_snapshot(b, &snap);
        if a.cidr() == b.cidr() {
            prop_assert!(res.is_ok());
        } else {
            prop_assert_eq!(res.err(), Some(SnapshotError::MismatchedNetwork));
        }
        let snap = PortAllocator::new(p).snapshot();
        let res = PortAllocator::from_snapshot(q, &snap);
        if p == q {
            prop_assert!(res.is_ok());
        } else {
            prop_assert_eq!(res.err(), Some(SnapshotError::MismatchedPortRange));
        }
    }
}

/// The default NodePort range filled completely: 2682 dynamic ports first, then the 86 static.
#[test]
fn default_port_range_fills_dynamic_then_static() {
    let mut a = PortAllocator::new(PortRange::default());
    let got: Vec<i32> = std::iter::from_fn(|| a.allocate_next().ok()).collect();
    assert_eq!(got.len(), 2768);
    assert!(got[..2682].iter().all(|p| (30086..=32767).contains(p)));
    assert!(got[2682..].iter().all(|p| (30000..=30085).contains(p)));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 2768);
}

/// A /16 full but one address: the last free one is found, from any cursor position.
#[test]
fn last_free_address_is_found() {
    let range: IpRange = "10.0.0.0/16".parse().expect("literal");
    let mut a = IpAllocator::new(range);
    while a.allocate_next().is_ok() {}
    assert_eq!(a.free(), 0);
    for k in [0u32, 255, 256, 30_000, 65_533] {
        let ip = range.ip_at(k).expect("in range");
        assert!(a.release(ip));
        assert_eq!(a.peek_next(), Ok(ip));
        assert_eq!(a.allocate_next(), Ok(ip));
        assert_eq!(a.allocate_next(), Err(AllocError::Full));
    }
    let restored = IpAllocator::from_snapshot(range, &a.snapshot()).expect("same range");
    assert!(restored.same_state(&a));
    assert_eq!(restored.peek_next(), Err(AllocError::Full));
}
