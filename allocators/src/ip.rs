//! ClusterIP allocation over a CIDR.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use crate::allocator::{Allocator, ValueRange};
use crate::allocator_error::{AllocError, RangeError, SnapshotError};
use crate::bitmap::Band;

/// Largest supported number of host bits: offsets must fit the 32-bit roaring bitmap.
const MAX_HOST_BITS: u8 = 32;

/// A CIDR and its allocatable addresses.
///
/// Offset 0 is the address after the network address. IPv4 also loses its broadcast address
/// (so /31 and /32 have none); IPv6 loses only the subnet-router (base) address. Unlike upstream's
/// bitmap, IPv6 is not capped at 65,535 addresses: any range of up to 2^32 addresses (a /96) is
/// allocatable in full. The static band is the first `clamp(2^hostbits / 16, 16, 256)` addresses,
/// or none when the CIDR has 16 addresses or fewer (KEP-3070).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    cidr: IpNet,
    first: u128,
    size: u32,
    static_size: u32,
}

impl IpRange {
    /// Builds the range of `cidr` (host bits are masked off, as Go's `ParseCIDR` does).
    pub fn new(cidr: IpNet) -> Result<Self, RangeError> {
        let cidr = cidr.trunc();
        let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
        if host_bits > MAX_HOST_BITS {
            return Err(RangeError::TooLarge { cidr });
        }
        let addresses = 1u64 << host_bits;
        let excluded = if cidr.addr().is_ipv4() { 2 } else { 1 };
        let size = addresses.saturating_sub(excluded) as u32;
        let static_size = if addresses <= 16 {
            0
        } else {
            (addresses / 16).clamp(16, 256) as u32
        };
        Ok(IpRange {
            cidr,
            first: to_u128(cidr.network()) + 1,
            size,
            static_size,
        })
    }

    /// The (masked) CIDR.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// Number of allocatable addresses.
    pub fn size(&self) -> u64 {
        u64::from(self.size)
    }

    /// Number of addresses in the static band.
    pub fn static_size(&self) -> u64 {
        u64::from(self.static_size)
    }

    /// Whether `ip` is allocatable in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some()
    }

    /// The band `ip` belongs to, or `None` outside the range.
    pub fn band_of(&self, ip: IpAddr) -> Option<Band> {
        self.offset_of(ip).map(|o| {
            if o < self.static_size {
                Band::Static
            } else {
                Band::Dynamic
            }
        })
    }

    /// First and last address of a band, or `None` if the band is empty.
    pub fn band_bounds(&self, band: Band) -> Option<RangeInclusive<IpAddr>> {
        let (lo, hi) = match band {
            Band::Static => (0, self.static_size),
            Band::Dynamic => (self.static_size, self.size),
        };
        if lo >= hi {
            return None;
        }
        Some(self.ip_at(lo)?..=self.ip_at(hi - 1)?)
    }

    /// Offset of `ip` (0 = first allocatable address), or `None` outside the range. IPv4-mapped
    /// IPv6 addresses count as IPv4 for an IPv4 range, as Go's `IPNet.Contains` does.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u32> {
        let ip = if self.cidr.addr().is_ipv4() {
            ip.to_canonical()
        } else {
            ip
        };
        if ip.is_ipv4() != self.cidr.addr().is_ipv4() {
            return None;
        }
        let offset = to_u128(ip).checked_sub(self.first)?;
        u32::try_from(offset).ok().filter(|o| *o < self.size)
    }

    /// The address at `offset`, or `None` past the end.
    pub fn ip_at(&self, offset: u32) -> Option<IpAddr> {
        if offset >= self.size {
            return None;
        }
        let value = self.first + u128::from(offset);
        Some(match self.cidr {
            // The range lies inside the IPv4 space, so the value fits.
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
        })
    }
}

impl FromStr for IpRange {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cidr = s
            .parse::<IpNet>()
            .map_err(|_| RangeError::InvalidCidr(s.to_owned()))?;
        IpRange::new(cidr)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cidr.fmt(f)
    }
}

/// Parses a requested clusterIP the way the apiserver does (`ParseIPSloppy`: IPv4 octets may
/// carry leading zeros and are read as decimal).
pub fn parse_service_ip(s: &str) -> Result<IpAddr, AllocError> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| parse_ipv4_sloppy(s).map(IpAddr::V4))
        .ok_or_else(|| AllocError::InvalidIp { value: s.to_owned() })
}

/// An IPv4 address as the apiserver's `ParseIPSloppy` reads it: octets may carry leading
/// zeros, read as decimal (`010.001.002.003` is `10.1.2.3`). One pass over the bytes, without
/// splitting or parsing numbers: the webhook reads every address of an 8 MB Endpoints list
/// through it.
pub fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut part, mut value, mut digits) = (0, 0u32, 0);
    for &c in s.as_bytes() {
        match c {
            b'0'..=b'9' => {
                value = value * 10 + u32::from(c - b'0');
                if value > 255 {
                    return None;
                }
                digits += 1;
            }
            b'.' if digits > 0 && part < 3 => {
                octets[part] = value as u8;
                (part, value, digits) = (part + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if digits == 0 || part != 3 {
        return None;
    }
    octets[3] = value as u8;
    Some(Ipv4Addr::from(octets))
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Addresses of a service CIDR, allocated over a roaring bitmap (see [`Allocator`]).
pub type IpAllocator = Allocator<IpRange>;

impl ValueRange for IpRange {
    type Value = IpAddr;

    fn bitmap_size(&self) -> u32 {
        self.size
    }

    fn static_band_size(&self) -> u32 {
        self.static_size
    }

    fn offset_of_value(&self, ip: IpAddr) -> Option<u32> {
        self.offset_of(ip)
    }

    fn value_at(&self, offset: u32) -> Option<IpAddr> {
        self.ip_at(offset)
    }

    fn not_in_range(&self, ip: IpAddr) -> AllocError {
        AllocError::IpNotInRange { ip, cidr: self.cidr }
    }

    fn already_allocated() -> AllocError {
        AllocError::IpAllocated
    }

    fn is_same_range(&self, stored: &str) -> bool {
        stored.parse::<IpNet>().is_ok_and(|n| n.trunc() == self.cidr)
    }

    fn mismatched() -> SnapshotError {
        SnapshotError::MismatchedNetwork
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    /// The grammar spelled out: four dot-separated parts of ASCII digits, each worth at most
    /// 255 once its leading zeros are dropped.
    fn split_ipv4(s: &str) -> Option<Ipv4Addr> {
        let mut octets = [0u8; 4];
        let mut parts = s.split('.');
        for octet in &mut octets {
            let part = parts.next()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let digits = part.trim_start_matches('0');
            *octet = if digits.is_empty() {
                0
            } else {
                digits.parse().ok()?
            };
        }
        parts.next().is_none().then_some(Ipv4Addr::from(octets))
    }

    proptest::proptest! {
        #[test]
        fn ipv4_reads_as_the_grammar_says(s in "[0-9.]{0,20}|[0-9]{1,4}(\\.[0-9]{1,4}){3}|[0-9a-f:.x ]{0,12}|\\PC{0,8}") {
            proptest::prop_assert_eq!(parse_ipv4_sloppy(&s), split_ipv4(&s), "{:?}", s);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn range(s: &str) -> IpRange {
        s.parse().expect("test range")
    }

    #[test]
    fn sizes_and_bands_match_upstream_tables() {
        // (cidr, usable, static band), from the reference's verified tables; IPv6 past /112 is
        // where we deliberately differ (no 65,535 cap).
        let cases = [
            ("10.0.0.0/32", 0, 0),
            ("10.0.0.0/31", 0, 0),
            ("10.0.0.0/30", 2, 0),
            ("10.0.0.0/28", 14, 0),
            ("10.0.0.0/27", 30, 16),
            ("10.0.0.0/24", 254, 16),
            ("192.168.0.0/22", 1022, 64),
            ("10.0.0.0/20", 4094, 256),
            ("10.0.0.0/16", 65534, 256),
            ("10.0.0.0/12", 1_048_574, 256),
            ("10.0.0.0/8", 16_777_214, 256),
            ("0.0.0.0/0", 4_294_967_294, 256),
            ("fd00::/128", 0, 0),
            ("fd00::/127", 1, 0),
            ("fd00::/124", 15, 0),
            ("fd00::/123", 31, 16),
            ("fd00::/122", 63, 16),
            ("fd00::/118", 1023, 64),
            ("fd00::/112", 65535, 256),
            ("fd00::/108", 1_048_575, 256),
            ("fd00::/96", 4_294_967_295, 256),
        ];
        for (cidr, size, static_size) in cases {
            let r = range(cidr);
            assert_eq!((r.size(), r.static_size()), (size, static_size), "{cidr}");
        }
    }

    #[test]
    fn refuses_more_than_2_pow_32_addresses() {
        let err = "fd00::/95".parse::<IpRange>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "specified range fd00::/95 is too large; for 128-bit addresses, the mask must be >= 96"
        );
        assert_eq!(
            "10.0.0.0/33".parse::<IpRange>().unwrap_err().to_string(),
            "invalid CIDR address: 10.0.0.0/33"
        );
    }

    #[test]
    fn masks_host_bits_and_maps_offsets() {
        let r = range("10.0.0.77/24");
        assert_eq!(r.to_string(), "10.0.0.0/24");
        assert_eq!(r.offset_of(ip("10.0.0.1")), Some(0));
        assert_eq!(r.offset_of(ip("10.0.0.254")), Some(253));
        assert_eq!(r.offset_of(ip("10.0.0.0")), None);
        assert_eq!(r.offset_of(ip("10.0.0.255")), None);
        assert_eq!(r.offset_of(ip("10.0.1.1")), None);
        assert_eq!(r.offset_of(ip("fd00::1")), None);
        assert_eq!(r.offset_of(ip("::ffff:10.0.0.5")), Some(4));
        assert_eq!(r.ip_at(253), Some(ip("10.0.0.254")));
        assert_eq!(r.ip_at(254), None);
        assert_eq!(
            r.band_bounds(Band::Static),
            Some(ip("10.0.0.1")..=ip("10.0.0.16"))
        );
        assert_eq!(
            r.band_bounds(Band::Dynamic),
            Some(ip("10.0.0.17")..=ip("10.0.0.254"))
        );
        assert_eq!(r.band_of(ip("10.0.0.16")), Some(Band::Static));
        assert_eq!(r.band_of(ip("10.0.0.17")), Some(Band::Dynamic));
        assert_eq!(range("10.0.0.0/28").band_bounds(Band::Static), None);
    }

    #[test]
    fn ipv6_keeps_the_all_ones_address_and_spans_a_slash_96() {
        let r = range("fd00::/96");
        assert_eq!(r.offset_of(ip("fd00::")), None);
        assert_eq!(r.offset_of(ip("fd00::1")), Some(0));
        assert_eq!(r.offset_of(ip("fd00::ffff:ffff")), Some(u32::MAX - 1));
        assert_eq!(r.offset_of(ip("fd00::1:0:0")), None);
        assert_eq!(r.ip_at(u32::MAX - 1), Some(ip("fd00::ffff:ffff")));
        let mut a = IpAllocator::new(r);
        a.allocate(ip("fd00::ffff:ffff")).expect("last address");
        assert_eq!(a.allocate_next(), Ok(ip("fd00::101")));
        assert_eq!(a.band_stats(Band::Dynamic).used, 2);
        assert_eq!(a.free(), u64::from(u32::MAX) - 2);
    }

    #[test]
    fn error_messages_match_upstream() {
        let mut a = IpAllocator::new(range("10.0.0.0/24"));
        a.allocate(ip("10.0.0.5")).expect("free");
        assert_eq!(
            a.allocate(ip("10.0.0.5")).unwrap_err().to_string(),
            "provided IP is already allocated"
        );
        assert_eq!(
            a.allocate(ip("1.1.1.1")).unwrap_err().to_string(),
            "the provided IP (1.1.1.1) is not in the valid range. The range of valid IPs is 10.0.0.0/24"
        );
        assert_eq!(
            a.check_allocate(ip("10.0.0.255")).unwrap_err().to_string(),
            "the provided IP (10.0.0.255) is not in the valid range. The range of valid IPs is 10.0.0.0/24"
        );
        let mut empty = IpAllocator::new(range("10.0.0.0/31"));
        assert_eq!(empty.allocate_next().unwrap_err().to_string(), "range is full");
        assert_eq!(
            parse_service_ip("abc").unwrap_err().to_string(),
            r#"failed to parse service IP "abc""#
        );
    }

    #[test]
    fn parses_service_ips_sloppily() {
        assert_eq!(parse_service_ip("010.000.0.5"), Ok(ip("10.0.0.5")));
        assert_eq!(parse_service_ip("2001:DB8::1"), Ok(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0",
            "10.0.0.256",
            "10.0.0.5.1",
            "10..0.5",
            "10.0.0.-1",
            "None",
        ] {
            assert!(parse_service_ip(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dry_run_answers_what_the_real_call_would() {
        let mut a = IpAllocator::new(range("10.0.0.0/28"));
        for _ in 0..14 {
            let peeked = a.peek_next().expect("not full");
            assert_eq!(a.check_allocate(peeked), Ok(()));
            assert_eq!(a.allocate_next(), Ok(peeked));
            assert_eq!(a.check_allocate(peeked), Err(AllocError::IpAllocated));
        }
        assert_eq!(a.peek_next(), Err(AllocError::Full));
    }

    #[test]
    fn release_and_has_ignore_foreign_addresses() {
        let mut a = IpAllocator::new(range("10.0.0.0/24"));
        assert!(!a.release(ip("192.168.0.1")));
        assert!(!a.has(ip("192.168.0.1")));
        a.allocate(ip("10.0.0.9")).expect("free");
        assert!(a.has(ip("10.0.0.9")));
        assert!(a.release(ip("10.0.0.9")));
        assert!(!a.release(ip("10.0.0.9")));
    }

    #[test]
    fn iterates_in_ascending_order() {
        let mut a = IpAllocator::new(range("10.0.0.0/24"));
        for s in ["10.0.0.200", "10.0.0.3", "10.0.0.17"] {
            a.allocate(ip(s)).expect("free");
        }
        let held: Vec<IpAddr> = a.iter().collect();
        assert_eq!(held, [ip("10.0.0.3"), ip("10.0.0.17"), ip("10.0.0.200")]);
    }

    #[test]
    fn snapshot_restores_only_into_the_same_network() {
        let mut a = IpAllocator::new(range("10.0.0.0/24"));
        a.allocate_next().expect("free");
        a.allocate(ip("10.0.0.2")).expect("free");
        let snap = a.snapshot();
        assert_eq!(snap.range, "10.0.0.0/24");
        let b = IpAllocator::from_snapshot(range("10.0.0.0/24"), &snap).expect("same range");
        assert!(a.same_state(&b));
        let err = IpAllocator::from_snapshot(range("10.0.1.0/24"), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the provided network does not match the current range"
        );
        let err = IpAllocator::from_snapshot(range("10.0.0.0/25"), &snap).unwrap_err();
        assert_eq!(err, SnapshotError::MismatchedNetwork);

        // A snapshot claiming this range but carrying offsets past it.
        let wide = IpAllocator::new(range("10.0.0.0/16"));
        let mut wide = wide;
        wide.allocate(ip("10.0.1.10")).expect("free");
        let forged = Snapshot {
            range: "10.0.0.0/24".into(),
            data: wide.snapshot().data,
        };
        assert_eq!(
            IpAllocator::from_snapshot(range("10.0.0.0/24"), &forged)
                .unwrap_err()
                .to_string(),
            "restoring snapshot encountered offset 265 beyond the range size 254"
        );
    }
}
