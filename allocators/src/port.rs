//! NodePort allocation over a `lo-hi` port range.

use std::fmt;
use std::str::FromStr;

use crate::allocator::{Allocator, ValueRange};
use crate::allocator_error::{AllocError, RangeError, SnapshotError};
use crate::bitmap::Band;

/// An inclusive port range, `30000-32767` by default.
///
/// The static band is the first `clamp(size / 32, 16, 128)` ports, or none for 16 ports or fewer
/// (KEP-3668): 86 ports (30000-30085) for the default range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// The range `first..=last`.
    pub fn new(first: u16, last: u16) -> Result<Self, RangeError> {
        if last < first {
            return Err(RangeError::EndBeforeStart(format!("{first}-{last}")));
        }
        Ok(PortRange { first, last })
    }

    /// Lowest port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Highest port.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Number of ports.
    pub fn size(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Number of ports in the static band.
    pub fn static_size(&self) -> u64 {
        let size = self.size();
        if size <= 16 { 0 } else { (size / 32).clamp(16, 128) }
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: i32) -> bool {
        self.offset_of(port).is_some()
    }

    /// The band `port` belongs to, or `None` outside the range.
    pub fn band_of(&self, port: i32) -> Option<Band> {
        self.offset_of(port).map(|o| {
            if u64::from(o) < self.static_size() {
                Band::Static
            } else {
                Band::Dynamic
            }
        })
    }

    /// First and last port of a band, or `None` if the band is empty.
    pub fn band_bounds(&self, band: Band) -> Option<(u16, u16)> {
        let split = self.static_size();
        let (lo, hi) = match band {
            Band::Static => (0, split),
            Band::Dynamic => (split, self.size()),
        };
        // Offsets are below the range size, so first + offset stays within first..=last.
        (lo < hi).then(|| (self.first + lo as u16, self.first + (hi - 1) as u16))
    }

    fn offset_of(&self, port: i32) -> Option<u32> {
        let port = u16::try_from(port).ok()?;
        (self.first..=self.last)
            .contains(&port)
            .then(|| u32::from(port - self.first))
    }

    fn port_at(&self, offset: u32) -> i32 {
        i32::from(self.first) + offset as i32
    }
}

impl Default for PortRange {
    /// The apiserver's default `--service-node-port-range`, 30000-32767.
    fn default() -> Self {
        PortRange {
            first: 30000,
            last: 32767,
        }
    }
}

impl FromStr for PortRange {
    type Err = RangeError;

    /// Accepts `N`, `A-B` and `A+offset` like the apiserver's `--service-node-port-range`, with
    /// its error messages (any malformed number reports "unable to parse port range").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s.trim();
        if value.is_empty() {
            return Err(RangeError::EmptyPortRange);
        }
        let unparsable = || RangeError::UnparsablePorts(value.to_owned());
        let number = |n: &str| -> Result<u64, RangeError> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unparsable());
            }
            n.parse::<u64>().map_err(|_| unparsable())
        };
        let (low, high) = match (value.split_once('-'), value.split_once('+')) {
            (None, None) => {
                let port = number(value)?;
                (port, port)
            }
            (Some((a, b)), None) => (number(a)?, number(b)?),
            (None, Some((a, b))) => {
                let low = number(a)?;
                (low, low.saturating_add(number(b)?))
            }
            (Some(_), Some(_)) => return Err(unparsable()),
        };
        let (Ok(first), Ok(last)) = (u16::try_from(low), u16::try_from(high)) else {
            return Err(RangeError::PortTooLarge(value.to_owned()));
        };
        if last < first {
            return Err(RangeError::EndBeforeStart(value.to_owned()));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Node ports of a range, allocated over a roaring bitmap (see [`Allocator`]). Ports are `i32`
/// as in the Service API (`nodePort`, `healthCheckNodePort`), so negative or oversized requests
/// are refused as out of range, like upstream.
pub type PortAllocator = Allocator<PortRange>;

impl ValueRange for PortRange {
    type Value = i32;

    fn bitmap_size(&self) -> u32 {
        // A port range has at most 65,536 ports.
        self.size() as u32
    }

    fn static_band_size(&self) -> u32 {
        self.static_size() as u32
    }

    fn offset_of_value(&self, port: i32) -> Option<u32> {
        self.offset_of(port)
    }

    fn value_at(&self, offset: u32) -> Option<i32> {
        (u64::from(offset) < self.size()).then(|| self.port_at(offset))
    }

    fn not_in_range(&self, port: i32) -> AllocError {
        AllocError::PortNotInRange { port, range: *self }
    }

    fn already_allocated() -> AllocError {
        AllocError::PortAllocated
    }

    fn is_same_range(&self, stored: &str) -> bool {
        stored.parse::<PortRange>().ok() == Some(*self)
    }

    fn mismatched() -> SnapshotError {
        SnapshotError::MismatchedPortRange
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::BandStats;

    fn pr(s: &str) -> PortRange {
        s.parse().expect("test range")
    }

    #[test]
    fn default_range_has_86_static_ports() {
        let r = PortRange::default();
        assert_eq!(r.to_string(), "30000-32767");
        assert_eq!((r.size(), r.static_size()), (2768, 86));
        assert_eq!(r.band_bounds(Band::Static), Some((30000, 30085)));
        assert_eq!(r.band_bounds(Band::Dynamic), Some((30086, 32767)));
        assert_eq!(r.band_of(30085), Some(Band::Static));
        assert_eq!(r.band_of(30086), Some(Band::Dynamic));
        assert_eq!(r.band_of(29999), None);
    }

    #[test]
    fn static_band_sizes_match_upstream_table() {
        // (size, static band) from the reference's calculateRangeOffset table.
        for (size, offset) in [
            (1u32, 0u64),
            (10, 0),
            (16, 0),
            (17, 16),
            (32, 16),
            (128, 16),
            (512, 16),
            (1024, 32),
            (2048, 64),
            (2768, 86),
            (4095, 127),
            (4096, 128),
            (8192, 128),
            (65535, 128),
            (65536, 128),
        ] {
            let r = PortRange::new(0, (size - 1) as u16).expect("valid");
            assert_eq!(
                (r.size(), r.static_size()),
                (u64::from(size), offset),
                "size {size}"
            );
        }
    }

    #[test]
    fn parses_like_the_apiserver_flag() {
        assert_eq!(pr("30000-32767"), PortRange::default());
        assert_eq!(pr(" 30000+2767 "), PortRange::default());
        assert_eq!(pr("8080").to_string(), "8080-8080");
        assert_eq!(pr("0-65535").size(), 65536);
        let err = |s: &str| s.parse::<PortRange>().unwrap_err().to_string();
        assert_eq!(
            err("30000-65536"),
            "the port range cannot be greater than 65535: 30000-65536"
        );
        assert_eq!(
            err("65000+1000"),
            "the port range cannot be greater than 65535: 65000+1000"
        );
        assert_eq!(
            err("32767-30000"),
            "end port cannot be less than start port: 32767-30000"
        );
        assert_eq!(err("1-2+3"), "unable to parse port range: 1-2+3");
        assert_eq!(err("a-b"), "unable to parse port range: a-b");
        assert_eq!(err("-5"), "unable to parse port range: -5");
        assert_eq!(
            err("99999999999999999999999"),
            "unable to parse port range: 99999999999999999999999"
        );
        assert_eq!(err("  "), "the port range must not be empty");
        assert_eq!(
            PortRange::new(5, 4).unwrap_err().to_string(),
            "end port cannot be less than start port: 5-4"
        );
    }

    #[test]
    fn error_messages_match_upstream() {
        let mut a = PortAllocator::new(PortRange::default());
        a.allocate(30080).expect("free");
        assert_eq!(
            a.allocate(30080).unwrap_err().to_string(),
            "provided port is already allocated"
        );
        for bad in [80, -1, 70000, 32768] {
            assert_eq!(
                a.allocate(bad).unwrap_err().to_string(),
                "provided port is not in the valid range. The range of valid ports is 30000-32767"
            );
        }
        let mut one = PortAllocator::new(pr("30000"));
        assert_eq!(one.allocate_next(), Ok(30000));
        assert_eq!(one.allocate_next().unwrap_err().to_string(), "range is full");
    }

    #[test]
    fn next_port_prefers_the_dynamic_band() {
        let mut a = PortAllocator::new(PortRange::default());
        assert_eq!(a.peek_next(), Ok(30086));
        assert_eq!(a.allocate_next(), Ok(30086));
        assert_eq!(a.allocate_next(), Ok(30087));
        for _ in 0..2680 {
            let port = a.allocate_next().expect("free");
            assert_eq!(a.band_of(port), Some(Band::Dynamic));
        }
        assert_eq!(a.band_stats(Band::Dynamic).free, 0);
        assert_eq!(a.allocate_next(), Ok(30000));
        assert_eq!(
            a.band_stats(Band::Static),
            BandStats {
                size: 86,
                used: 1,
                free: 85
            }
        );
        assert_eq!((a.used(), a.free(), a.size()), (2683, 85, 2768));
    }

    #[test]
    fn snapshot_restores_only_into_the_same_range() {
        let mut a = PortAllocator::new(PortRange::default());
        a.allocate(30001).expect("free");
        a.allocate_next().expect("free");
        let snap = a.snapshot();
        assert_eq!(snap.range, "30000-32767");
        let b = PortAllocator::from_snapshot(PortRange::default(), &snap).expect("same range");
        assert!(a.same_state(&b));
        assert_eq!(b.iter().collect::<Vec<_>>(), [30001, 30086]);
        let err = PortAllocator::from_snapshot(pr("30000-32768"), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the provided port range does not match the current port range"
        );
    }
}
