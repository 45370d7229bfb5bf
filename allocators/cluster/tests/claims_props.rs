//! Property tests of one range's state: whatever the order of admissions, watch events, reloads
//! of the shared claims and expiries, a value is marked exactly while something holds or claims
//! it, and nothing held or claimed is ever handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use portico_allocation::{Holder, Pending, RangeState, ServiceRef};
use portico_allocators::{PortAllocator, PortRange};
use proptest::prelude::*;

const LO: u16 = 30000;
const HI: u16 = 30063;

#[derive(Debug, Clone)]
enum Op {
    /// An admission asks for the next free value.
    Next(u8),
    /// An admission asks for this value.
    Claim(u8, u8),
    /// The watch sees Service `s` hold the value.
    Hold(u8, u8),
    /// The watch sees Service `s` let go of the value.
    Unhold(u8, u8),
    /// An `IPAddress` of another manager (no Service parent) takes the value, or goes.
    Address(u8, bool),
    /// The clock moves on by this many seconds.
    Tick(u8),
    /// Another replica's write: the shared claims are read back with one more claim of its own.
    Reload(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::Next),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(s, v)| Op::Claim(s, v)),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(s, v)| Op::Hold(s, v)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(s, v)| Op::Unhold(s, v)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(v, on)| Op::Address(v, on)),
        1 => (0u8..40).prop_map(Op::Tick),
        1 => any::<u8>().prop_map(Op::Reload),
    ]
}

fn port(v: u8) -> i32 {
    i32::from(LO) + i32::from(v) % i32::from(HI - LO + 1)
}

fn svc(s: u8) -> ServiceRef {
    ServiceRef::new("ns", format!("s{}", s % 8))
}

fn check(reservations: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut state = RangeState::new(PortAllocator::new(PortRange::new(LO, HI).expect("range")));
    if reservations {
        state = state.with_reservations("me", 4, Duration::from_secs(30));
    }
    let mut now = Timestamp::from_second(1_000).expect("ts");
    let ttl = k8s_openapi::jiff::SignedDuration::from_secs(30);
    // What the cluster holds, as the watch told it.
    let mut held: BTreeMap<i32, BTreeSet<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Next(s) => {
                if let Ok(v) = state.claim_next(&svc(s), now.checked_add(ttl).expect("ts")) {
                    prop_assert!(
                        held.get(&v).is_none_or(BTreeSet::is_empty),
                        "handed out {v}, which a Service holds"
                    );
                }
            }
            Op::Claim(s, v) => {
                let v = port(v);
                let taken = held.get(&v).is_some_and(|h| !h.is_empty());
                let result = state.claim(v, &svc(s), now.checked_add(ttl).expect("ts"));
                if taken {
                    prop_assert!(result.is_err(), "{v} is held, yet claimed");
                }
            }
            Op::Hold(s, v) => {
                let v = port(v);
                held.entry(v).or_default().insert(s % 8);
                state.hold(v, Holder::Service(svc(s)), now);
            }
            Op::Unhold(s, v) => {
                let v = port(v);
                if let Some(h) = held.get_mut(&v) {
                    h.remove(&(s % 8));
                }
                state.unhold(v, &Holder::Service(svc(s)));
            }
            Op::Address(v, on) => {
                // Holder id 8: no Service's.
                let v = port(v);
                let holder = Holder::Address { parent: None };
                if on {
                    held.entry(v).or_default().insert(8);
                    state.hold(v, holder, now);
                } else {
                    if let Some(h) = held.get_mut(&v) {
                        h.remove(&8);
                    }
                    state.unhold(v, &holder);
                }
            }
            Op::Tick(secs) => {
                now = now
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(secs)))
                    .expect("ts");
                state.expire(now);
                prop_assert!(
                    state.pending().values().all(|p| p.expires > now),
                    "a claim outlived its TTL"
                );
            }
            Op::Reload(v) => {
                let mut stored = state.stored_claims();
                let v = port(v);
                if !state.pool().has(v) {
                    stored.insert(
                        v,
                        Pending {
                            owner: ServiceRef::reservation("other"),
                            expires: now.checked_add(ttl).expect("ts"),
                        },
                    );
                }
                state.replace_claims(stored, now);
            }
        }
        // The bitmap is exactly the union of what is held and what is claimed.
        for v in i32::from(LO)..=i32::from(HI) {
            let used = held.get(&v).is_some_and(|h| !h.is_empty()) || state.pending().contains_key(&v);
            prop_assert_eq!(
                state.pool().has(v),
                used,
                "value {} out of line with holdings and claims",
                v
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_bitmap_is_holdings_plus_claims(ops in proptest::collection::vec(op(), 1..120)) {
        check(false, ops)?;
    }

    #[test]
    fn the_same_with_reservations(ops in proptest::collection::vec(op(), 1..120)) {
        check(true, ops)?;
    }
}
