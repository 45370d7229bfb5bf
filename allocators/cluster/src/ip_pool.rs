//! The clusterIP bitmap of one family over several CIDRs (the apiserver's ServiceCIDRs, and
//! an optional narrowing that new values come from).
//!
//! Overlapping CIDRs are allowed (upstream allows overlapping ServiceCIDRs): a value is marked
//! in every CIDR that contains it, so whichever CIDR next-fit draws from never hands out a value
//! another CIDR knows as used.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use portico_allocators::{AllocError, Band, BandStats, IpAllocator, IpRange};

use super::range_state::{Cursors, Pool, RangeKind};

/// One CIDR of the pool and what it is used for.
#[derive(Debug, Clone)]
struct Member {
    allocator: IpAllocator,
    /// New values (`allocate_next`) come from here.
    dynamic: bool,
}

/// Where explicit values outside every CIDR are refused and with which error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideError {
    /// "the provided network does not match the current range" (the multi-CIDR allocator of
    /// 1.33+).
    MismatchedNetwork,
    /// "the provided IP (…) is not in the valid range. The range of valid IPs is <first CIDR>"
    /// (a single flag-configured range, as before 1.33).
    NotInRange,
}

/// The clusterIP pool of one family.
///
/// A CIDR with more than 2^32 addresses (an IPv6 /64 ServiceCIDR) has no bitmap of its own: its
/// first /96 is drawn from (same static band as upstream's, 256 addresses), and explicit values
/// beyond it are tracked one by one.
#[derive(Debug, Clone)]
pub struct IpPool {
    members: Vec<Member>,
    wide: Vec<IpNet>,
    wide_marked: BTreeSet<IpAddr>,
    outside: OutsideError,
}

/// The bitmap range of `cidr`: itself, or its first /96 when it is larger.
fn bitmap_range(cidr: IpNet) -> Option<(IpRange, bool)> {
    match IpRange::new(cidr) {
        Ok(r) => Some((r, false)),
        Err(_) => {
            let first = IpNet::new(cidr.network(), 96).ok()?;
            IpRange::new(first).ok().map(|r| (r, true))
        }
    }
}

impl IpPool {
    /// A pool over `explicit` CIDRs (values a request may name) drawing new values from
    /// `dynamic` (all of `explicit` when empty). Each dynamic CIDR is also explicit.
    pub fn new(explicit: &[IpNet], dynamic: &[IpNet], outside: OutsideError) -> Self {
        let mut pool = IpPool {
            members: Vec::new(),
            wide: Vec::new(),
            wide_marked: BTreeSet::new(),
            outside,
        };
        let draw_all = dynamic.is_empty();
        let roles = dynamic
            .iter()
            .map(|c| (c, true))
            .chain(explicit.iter().map(|c| (c, draw_all)));
        for (cidr, draws) in roles {
            let Some((range, wide)) = bitmap_range(cidr.trunc()) else {
                continue;
            };
            if wide && !pool.wide.contains(&cidr.trunc()) {
                pool.wide.push(cidr.trunc());
            }
            if !pool.members.iter().any(|m| *m.allocator.range() == range) {
                pool.members.push(Member {
                    allocator: IpAllocator::new(range),
                    dynamic: draws,
                });
            }
        }
        pool
    }

    /// A pool over one range (the flag-configured case).
    pub fn single(range: IpRange) -> Self {
        IpPool::new(&[range.cidr()], &[], OutsideError::NotInRange)
    }

    fn in_wide(&self, ip: IpAddr) -> bool {
        self.containing(ip).next().is_none() && self.wide.iter().any(|w| w.contains(&ip))
    }

    /// The CIDRs, those new values come from first.
    pub fn ranges(&self) -> Vec<IpRange> {
        self.members.iter().map(|m| *m.allocator.range()).collect()
    }

    /// The CIDRs new values come from.
    pub fn dynamic_ranges(&self) -> Vec<IpRange> {
        self.members
            .iter()
            .filter(|m| m.dynamic)
            .map(|m| *m.allocator.range())
            .collect()
    }

    fn containing(&self, ip: IpAddr) -> impl Iterator<Item = usize> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter(move |(_, m)| m.allocator.range().contains(ip))
            .map(|(i, _)| i)
    }

    fn outside_error(&self, ip: IpAddr) -> AllocError {
        // The multi-CIDR allocator finds no range for the network address or the IPv4 broadcast
        // either (kube-apiserver 1.37 answers so, checked by the integration suite).
        if self.outside == OutsideError::MismatchedNetwork {
            return AllocError::MismatchedNetwork;
        }
        let first = self
            .members
            .iter()
            .find(|m| m.allocator.range().cidr().contains(&ip))
            .or(self.members.first());
        match first {
            Some(m) => AllocError::IpNotInRange {
                ip,
                cidr: m.allocator.range().cidr(),
            },
            None => AllocError::MismatchedNetwork,
        }
    }
}

impl Pool for IpPool {
    type Value = IpAddr;
    const KIND: RangeKind = RangeKind::ClusterIp;

    fn range_string(&self) -> String {
        let ranges: Vec<String> = self
            .members
            .iter()
            .map(|m| m.allocator.range().to_string())
            .collect();
        ranges.join(",")
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.containing(ip).next().is_some() || self.in_wide(ip)
    }

    fn has(&self, ip: IpAddr) -> bool {
        self.containing(ip).any(|i| self.members[i].allocator.has(ip)) || self.wide_marked.contains(&ip)
    }

    fn check(&self, ip: IpAddr) -> Result<(), AllocError> {
        if self.contains(ip) {
            Ok(())
        } else {
            Err(self.outside_error(ip))
        }
    }

    fn taken() -> AllocError {
        AllocError::IpAllocated
    }

    fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        self.check(ip)?;
        if self.has(ip) {
            return Err(AllocError::IpAllocated);
        }
        if self.in_wide(ip) {
            self.wide_marked.insert(ip);
            return Ok(());
        }
        let idx: Vec<usize> = self.containing(ip).collect();
        for i in idx {
            let _ = self.members[i].allocator.allocate(ip);
        }
        Ok(())
    }

    fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        for i in 0..self.members.len() {
            if !self.members[i].dynamic {
                continue;
            }
            match self.members[i].allocator.allocate_next() {
                Ok(ip) => {
                    let others: Vec<usize> = self.containing(ip).filter(|j| *j != i).collect();
                    for j in others {
                        let _ = self.members[j].allocator.allocate(ip);
                    }
                    return Ok(ip);
                }
                Err(AllocError::Full) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AllocError::Full)
    }

    fn release(&mut self, ip: IpAddr) -> bool {
        let idx: Vec<usize> = self.containing(ip).collect();
        let mut any = self.wide_marked.remove(&ip);
        for i in idx {
            any |= self.members[i].allocator.release(ip);
        }
        any
    }

    fn held(&self) -> Vec<IpAddr> {
        let mut set: BTreeSet<IpAddr> = self.members.iter().flat_map(|m| m.allocator.iter()).collect();
        set.extend(self.wide_marked.iter().copied());
        set.into_iter().collect()
    }

    fn band_stats(&self, band: Band) -> BandStats {
        let mut out = BandStats::default();
        for m in self.members.iter().filter(|m| m.dynamic) {
            let s = m.allocator.band_stats(band);
            out.size += s.size;
            out.used += s.used;
            out.free += s.free;
        }
        out
    }

    fn cursors(&self) -> Cursors {
        self.members
            .iter()
            .map(|m| (m.allocator.range().to_string(), m.allocator.cursors()))
            .collect()
    }

    fn set_cursors(&mut self, cursors: &Cursors) {
        for m in &mut self.members {
            if let Some((s, d)) = cursors.get(&m.allocator.range().to_string()) {
                m.allocator.set_cursors(*s, *d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> IpNet {
        s.parse().expect("range")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn overlapping_cidrs_share_their_marks() {
        let mut p = IpPool::new(
            &[r("10.0.0.0/24"), r("10.0.0.0/28")],
            &[r("10.0.0.0/28")],
            OutsideError::MismatchedNetwork,
        );
        let mut got = Vec::new();
        while let Ok(v) = p.allocate_next() {
            got.push(v);
        }
        assert_eq!(got.len(), 14, "only the narrowing is drawn from");
        for v in &got {
            assert!(p.members[1].allocator.has(*v), "marked in the enclosing CIDR too");
            assert_eq!(p.allocate(*v), Err(AllocError::IpAllocated));
        }
        assert_eq!(
            p.allocate(ip("10.0.0.200")),
            Ok(()),
            "an explicit value of the wider CIDR"
        );
        assert_eq!(p.allocate(ip("10.0.1.1")), Err(AllocError::MismatchedNetwork));
        assert!(p.release(got[0]));
        assert!(!p.has(got[0]));
        assert_eq!(p.held().len(), 14);
    }

    #[test]
    fn a_full_cidr_moves_next_fit_to_the_next_one() {
        let mut p = IpPool::new(
            &[r("10.0.0.0/30"), r("10.1.0.0/30")],
            &[],
            OutsideError::MismatchedNetwork,
        );
        let got: Vec<IpAddr> = std::iter::from_fn(|| p.allocate_next().ok()).collect();
        assert_eq!(
            got,
            vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.1.0.1"), ip("10.1.0.2")]
        );
        assert_eq!(p.allocate_next(), Err(AllocError::Full));
    }

    #[test]
    fn errors_name_the_single_flag_range_or_the_mismatched_network() {
        let mut p = IpPool::single("10.96.0.0/24".parse().expect("range"));
        assert_eq!(
            p.allocate(ip("10.97.0.1")).map_err(|e| e.to_string()),
            Err("the provided IP (10.97.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/24".to_owned())
        );
        assert_eq!(
            p.allocate(ip("10.96.0.255")).map_err(|e| e.to_string()),
            Err("the provided IP (10.96.0.255) is not in the valid range. The range of valid IPs is 10.96.0.0/24".to_owned()),
            "the broadcast address of a configured CIDR"
        );
        let mut multi = IpPool::new(&[r("10.96.0.0/24")], &[], OutsideError::MismatchedNetwork);
        assert_eq!(
            multi.allocate(ip("10.97.0.1")),
            Err(AllocError::MismatchedNetwork)
        );
    }

    #[test]
    fn an_ipv6_slash_64_draws_from_its_first_slash_96_and_accepts_any_of_its_addresses() {
        let mut p = IpPool::new(&[r("fd00::/64")], &[], OutsideError::MismatchedNetwork);
        let first = p.allocate_next().expect("free");
        assert_eq!(first, ip("fd00::101"), "after the 256-address static band");
        let far = ip("fd00::ffff:ffff:ffff:1");
        assert!(p.contains(far));
        assert_eq!(p.allocate(far), Ok(()));
        assert_eq!(p.allocate(far), Err(AllocError::IpAllocated));
        assert!(p.release(far));
        assert_eq!(p.allocate(ip("fd01::1")), Err(AllocError::MismatchedNetwork));
    }
}
