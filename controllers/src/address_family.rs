//! IP parsing with the leniency of the Kubernetes apiserver, and address families.

use std::net::{IpAddr, Ipv4Addr};

/// An EndpointSlice address type this controller produces.
///
/// The API also knows `FQDN` (never produced for pods) and the removed `IP`; existing slices
/// of those types are simply deleted by the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    /// `IPv4`
    IPv4,
    /// `IPv6`
    IPv6,
}

impl AddressType {
    /// The API spelling (`addressType` of a slice, an entry of `spec.ipFamilies`).
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }

    /// Parses an `ipFamilies` entry or a slice `addressType`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        }
    }

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressType::IPv4,
            IpAddr::V6(_) => AddressType::IPv6,
        }
    }
}

/// Parses an IP the way the apiserver's legacy parser does: IPv4 octets may carry leading
/// zeros (read as decimal, not octal), and an IPv4-mapped IPv6 address is an IPv4 address.
/// Anything else that `std` rejects (zones, CIDRs, garbage) is `None`.
pub(crate) fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_v4_sloppy(s) {
        return Some(IpAddr::V4(v4));
    }
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => Some(IpAddr::V6(v6)),
        },
        v4 => Some(v4),
    }
}

fn parse_v4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse::<u16>().ok().and_then(|v| u8::try_from(v).ok())?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// The canonical text of an IP string, or `None` if it does not parse.
pub(crate) fn canonical_ip(s: &str) -> Option<(AddressType, String)> {
    let ip = parse_ip_sloppy(s)?;
    Some((AddressType::of(&ip), ip.to_string()))
}

/// Sort key ordering addresses by their 16-byte form (IPv4 as `::ffff:a.b.c.d`), which is how
/// upstream orders Endpoints addresses. Unparseable strings sort last.
pub(crate) fn ip_sort_key(s: &str) -> [u8; 17] {
    let mut key = [0xffu8; 17];
    if let Some(ip) = parse_ip_sloppy(s) {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        key[0] = 0;
        key[1..].copy_from_slice(&bytes);
    }
    key
}

/// The family of an IP string as upstream's `IsIPv6String` decides it: anything that is not a
/// valid IPv6 address counts as IPv4.
pub(crate) fn family_of_loose(s: &str) -> AddressType {
    match parse_ip_sloppy(s) {
        Some(IpAddr::V6(_)) => AddressType::IPv6,
        _ => AddressType::IPv4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_parsing_table() {
        let cases: &[(&str, Option<(AddressType, &str)>)] = &[
            ("10.0.0.1", Some((AddressType::IPv4, "10.0.0.1"))),
            ("010.000.000.001", Some((AddressType::IPv4, "10.0.0.1"))),
            (
                "1234::5678:0000:0000:9abc:def0",
                Some((AddressType::IPv6, "1234::5678:0:0:9abc:def0")),
            ),
            ("::ffff:1.2.3.4", Some((AddressType::IPv4, "1.2.3.4"))),
            ("2001:DB8::1", Some((AddressType::IPv6, "2001:db8::1"))),
            ("256.0.0.1", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("fe80::1%eth0", None),
            ("10.0.0.0/8", None),
            ("", None),
            ("garbage", None),
        ];
        for (input, want) in cases {
            let got = canonical_ip(input);
            let want = want.map(|(t, s)| (t, s.to_string()));
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn sort_key_orders_v4_among_v6_like_16_byte_form() {
        let mut ips = vec!["2001:db8::1", "10.0.0.2", "::1", "10.0.0.10", "bogus", "9.0.0.1"];
        ips.sort_by_key(|s| ip_sort_key(s));
        assert_eq!(
            ips,
            vec!["::1", "9.0.0.1", "10.0.0.2", "10.0.0.10", "2001:db8::1", "bogus"]
        );
    }

    #[test]
    fn loose_family() {
        assert_eq!(family_of_loose("fd00::1"), AddressType::IPv6);
        assert_eq!(family_of_loose("10.0.0.1"), AddressType::IPv4);
        assert_eq!(family_of_loose("nonsense"), AddressType::IPv4);
        assert_eq!(family_of_loose(""), AddressType::IPv4);
    }
}
