//! The range-agnostic core: a set of used offsets in `[0, size)` split into two bands.

use std::fmt;

use roaring::RoaringBitmap;

use crate::allocator_error::SnapshotError;
use crate::free_search::FreeSearch;

/// The two subranges of KEP-3070 (ClusterIP) and KEP-3668 (NodePort).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Band {
    /// The lower part of the range, handed out dynamically only once the dynamic band is full,
    /// so it stays available for explicit requests.
    Static,
    /// The upper part of the range, where `allocate_next` looks first.
    Dynamic,
}

impl Band {
    /// Upstream's metric `scope` label: `static` or `dynamic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Static => "static",
            Band::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Occupancy of one band (or of a whole range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BandStats {
    /// Number of allocatable items.
    pub size: u64,
    /// Items held.
    pub used: u64,
    /// Items still available (`size - used`).
    pub free: u64,
}

/// Used offsets plus next-fit cursors; the IP and port allocators map values onto it.
#[derive(Debug, Clone)]
pub(crate) struct OffsetAllocator {
    // u32 is enough: the largest accepted range (an IPv6 /96 without its base) has u32::MAX items.
    size: u32,
    static_size: u32,
    used: RoaringBitmap,
    // RoaringBitmap::len() sums every container (65,536 of them for a /96): count ourselves.
    used_count: u64,
    search: FreeSearch,
    static_used: u32,
    // Next-fit: each band resumes after the offset it handed out last, so a just-released value is
    // not handed straight back (stale DNS, conntrack) and runs stay contiguous (small snapshots).
    static_cursor: u32,
    dynamic_cursor: u32,
}

impl OffsetAllocator {
    /// `static_size` must not exceed `size`.
    pub(crate) fn new(size: u32, static_size: u32) -> Self {
        let static_size = static_size.min(size);
        OffsetAllocator {
            size,
            static_size,
            used: RoaringBitmap::new(),
            used_count: 0,
            search: FreeSearch::new(u64::from(size)),
            static_used: 0,
            static_cursor: 0,
            dynamic_cursor: static_size,
        }
    }

    /// The next-fit positions `(static, dynamic)`.
    pub(crate) fn cursors(&self) -> (u32, u32) {
        (self.static_cursor, self.dynamic_cursor)
    }

    /// Restores next-fit positions; each is clamped into its band.
    pub(crate) fn set_cursors(&mut self, static_cursor: u32, dynamic_cursor: u32) {
        self.static_cursor = if static_cursor < self.static_size {
            static_cursor
        } else {
            0
        };
        self.dynamic_cursor = if (self.static_size..self.size).contains(&dynamic_cursor) {
            dynamic_cursor
        } else {
            self.static_size
        };
    }

    pub(crate) fn size(&self) -> u64 {
        u64::from(self.size)
    }

    pub(crate) fn used(&self) -> u64 {
        self.used_count
    }

    pub(crate) fn stats(&self) -> BandStats {
        stats(self.size(), self.used())
    }

    pub(crate) fn band_stats(&self, band: Band) -> BandStats {
        let static_used = u64::from(self.static_used);
        match band {
            Band::Static => stats(u64::from(self.static_size), static_used),
            Band::Dynamic => stats(
                self.size() - u64::from(self.static_size),
                self.used() - static_used,
            ),
        }
    }

    pub(crate) fn has(&self, offset: u32) -> bool {
        self.used.contains(offset)
    }

    /// Marks `offset` (< size) used; false if it already was.
    pub(crate) fn allocate(&mut self, offset: u32) -> bool {
        debug_assert!(offset < self.size);
        if !self.used.insert(offset) {
            return false;
        }
        self.used_count += 1;
        self.search.inserted(&self.used, offset);
        if offset < self.static_size {
            self.static_used += 1;
        }
        true
    }

    /// What `allocate_next` would return: next-fit in the dynamic band, then in the static band.
    pub(crate) fn peek_next(&self) -> Option<u32> {
        let band = self.next_band()?;
        let (lo, hi) = self.bounds(band);
        let cursor = self.cursor(band).clamp(lo, hi);
        self.search
            .first_free(&self.used, cursor, u64::from(hi))
            .or_else(|| self.search.first_free(&self.used, lo, u64::from(cursor)))
    }

    pub(crate) fn allocate_next(&mut self) -> Option<u32> {
        let band = self.next_band()?;
        let (lo, hi) = self.bounds(band);
        let cursor = self.cursor(band);
        // While filling, the cursor itself is free: one insert both checks and takes it, which
        // is what next-fit would pick anyway (saves a binary search in array containers).
        let offset = if (lo..hi).contains(&cursor) && self.allocate(cursor) {
            cursor
        } else {
            let offset = self.peek_next()?;
            self.allocate(offset);
            offset
        };
        let next = if offset + 1 >= hi { lo } else { offset + 1 };
        match band {
            Band::Static => self.static_cursor = next,
            Band::Dynamic => self.dynamic_cursor = next,
        }
        Some(offset)
    }

    /// Frees `offset`; false if it was not held.
    pub(crate) fn release(&mut self, offset: u32) -> bool {
        if !self.used.remove(offset) {
            return false;
        }
        self.used_count -= 1;
        self.search.removed(offset);
        if offset < self.static_size {
            self.static_used -= 1;
        }
        true
    }

    /// Used offsets in ascending order.
    pub(crate) fn iter(&self) -> roaring::bitmap::Iter<'_> {
        self.used.iter()
    }

    /// The used set in the portable roaring format, run-compressed.
    pub(crate) fn snapshot_data(&self) -> Vec<u8> {
        let mut compact = self.used.clone();
        compact.optimize();
        let mut data = Vec::with_capacity(compact.serialized_size());
        // Writing into a Vec cannot fail.
        let _ = compact.serialize_into(&mut data);
        data
    }

    /// Replaces the used set with `data`; on error nothing changes. Cursors are kept.
    pub(crate) fn restore_data(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        let mut used = RoaringBitmap::deserialize_from(data)
            .map_err(|e| SnapshotError::Corrupt(format!("invalid roaring bitmap: {e}")))?;
        if let Some(max) = used.max()
            && max >= self.size
        {
            let offset = used.range(self.size..).next().unwrap_or(max);
            return Err(SnapshotError::OffsetOutOfRange {
                offset,
                size: self.size(),
            });
        }
        // Run containers never convert back on their own; churn on them would cost O(runs).
        used.remove_run_compression();
        self.static_used = used.range_cardinality(..self.static_size) as u32;
        self.search.rebuild(&used);
        self.used_count = used.len();
        self.used = used;
        Ok(())
    }

    /// Same used set (range and bands are fixed by construction).
    pub(crate) fn same_state(&self, other: &Self) -> bool {
        self.size == other.size && self.static_size == other.static_size && self.used == other.used
    }

    /// The band `allocate_next` draws from: dynamic while it has room, then static.
    fn next_band(&self) -> Option<Band> {
        [Band::Dynamic, Band::Static]
            .into_iter()
            .find(|b| self.band_stats(*b).free > 0)
    }

    fn bounds(&self, band: Band) -> (u32, u32) {
        match band {
            Band::Static => (0, self.static_size),
            Band::Dynamic => (self.static_size, self.size),
        }
    }

    fn cursor(&self, band: Band) -> u32 {
        match band {
            Band::Static => self.static_cursor,
            Band::Dynamic => self.dynamic_cursor,
        }
    }
}

fn stats(size: u64, used: u64) -> BandStats {
    BandStats {
        size,
        used,
        free: size.saturating_sub(used),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_band_first_then_static() {
        let mut a = OffsetAllocator::new(20, 16);
        let got: Vec<u32> = (0..20).filter_map(|_| a.allocate_next()).collect();
        assert_eq!(
            got,
            [
                16, 17, 18, 19, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
            ]
        );
        assert_eq!(a.allocate_next(), None);
        assert_eq!(
            a.band_stats(Band::Static),
            BandStats {
                size: 16,
                used: 16,
                free: 0
            }
        );
    }

    #[test]
    fn next_fit_does_not_reuse_a_just_released_offset() {
        let mut a = OffsetAllocator::new(10, 0);
        assert_eq!(a.allocate_next(), Some(0));
        assert_eq!(a.allocate_next(), Some(1));
        assert!(a.release(0));
        assert_eq!(a.allocate_next(), Some(2));
        for want in 3..10 {
            assert_eq!(a.allocate_next(), Some(want));
        }
        assert_eq!(a.allocate_next(), Some(0), "wraps around to the released offset");
        assert_eq!(a.allocate_next(), None);
    }

    #[test]
    fn explicit_allocation_is_band_agnostic_and_skipped_by_next_fit() {
        let mut a = OffsetAllocator::new(40, 16);
        assert!(a.allocate(3));
        assert!(a.allocate(16));
        assert!(!a.allocate(16));
        assert_eq!(a.allocate_next(), Some(17));
        assert_eq!(a.band_stats(Band::Static).used, 1);
        assert_eq!(a.band_stats(Band::Dynamic).used, 2);
        assert!(a.release(3));
        assert!(!a.release(3));
        assert_eq!(a.band_stats(Band::Static).used, 0);
    }

    #[test]
    fn empty_range_is_always_full() {
        let mut a = OffsetAllocator::new(0, 0);
        assert_eq!(a.peek_next(), None);
        assert_eq!(a.allocate_next(), None);
        assert_eq!(a.stats(), BandStats::default());
    }

    #[test]
    fn restore_rejects_garbage_and_out_of_range_offsets() {
        let mut a = OffsetAllocator::new(10, 0);
        let mut big = OffsetAllocator::new(100, 0);
        big.allocate(42);
        big.allocate(7);
        assert_eq!(
            a.restore_data(&big.snapshot_data()),
            Err(SnapshotError::OffsetOutOfRange { offset: 42, size: 10 })
        );
        assert!(matches!(a.restore_data(b"nope"), Err(SnapshotError::Corrupt(_))));
        assert_eq!(a.used(), 0, "a failed restore leaves the state alone");
    }
}
