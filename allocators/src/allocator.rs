//! The allocator both kinds of range share: values of a [`ValueRange`] mapped onto the offsets
//! of one [`OffsetAllocator`]. [`IpAllocator`](crate::IpAllocator) and
//! [`PortAllocator`](crate::PortAllocator) are this type over [`IpRange`](crate::IpRange) and
//! [`PortRange`](crate::PortRange).

use crate::allocator_error::{AllocError, SnapshotError};
use crate::bitmap::{Band, BandStats, OffsetAllocator};
use crate::snapshot::Snapshot;

/// A range of allocatable values, numbered `0..size` by offset.
pub trait ValueRange: Clone + PartialEq + std::fmt::Display {
    /// What is handed out: an address or a port.
    type Value: Copy;
    /// Number of allocatable values; at most `u32::MAX`.
    fn bitmap_size(&self) -> u32;
    /// Size of the static (lower) band.
    fn static_band_size(&self) -> u32;
    /// Offset of `value`, or `None` outside the range.
    fn offset_of_value(&self, value: Self::Value) -> Option<u32>;
    /// The value at `offset`, or `None` past the end.
    fn value_at(&self, offset: u32) -> Option<Self::Value>;
    /// Upstream's "not in the valid range" error for `value`.
    fn not_in_range(&self, value: Self::Value) -> AllocError;
    /// Upstream's "already allocated" error for this kind of value.
    fn already_allocated() -> AllocError;
    /// Whether a snapshot taken of `stored` (its `Display` form) belongs to this range.
    fn is_same_range(&self, stored: &str) -> bool;
    /// Upstream's error for a snapshot of another range.
    fn mismatched() -> SnapshotError;
}

/// Values of a range, allocated over a roaring bitmap.
///
/// `allocate_next` is next-fit: it resumes after the value it handed out last, first in the
/// dynamic band and, only once that is full, in the static band. Every operation is independent
/// of the range size except snapshot and restore.
///
/// Dry runs use the `&self` methods [`check_allocate`](Self::check_allocate) and
/// [`peek_next`](Self::peek_next): they answer exactly what the mutating call would, without
/// changing anything (upstream's dry run checks only the range).
#[derive(Debug, Clone)]
pub struct Allocator<R> {
    range: R,
    bitmap: OffsetAllocator,
}

impl<R: ValueRange> Allocator<R> {
    /// An empty allocator over `range`.
    pub fn new(range: R) -> Self {
        Allocator {
            bitmap: OffsetAllocator::new(range.bitmap_size(), range.static_band_size()),
            range,
        }
    }

    /// The range this allocator hands out.
    pub fn range(&self) -> &R {
        &self.range
    }

    /// Takes `value`; errors if it is outside the range or already held.
    pub fn allocate(&mut self, value: R::Value) -> Result<(), AllocError> {
        let offset = self.offset(value)?;
        if self.bitmap.allocate(offset) {
            Ok(())
        } else {
            Err(R::already_allocated())
        }
    }

    /// Dry run of [`allocate`](Self::allocate).
    pub fn check_allocate(&self, value: R::Value) -> Result<(), AllocError> {
        let offset = self.offset(value)?;
        if self.bitmap.has(offset) {
            Err(R::already_allocated())
        } else {
            Ok(())
        }
    }

    /// Takes the next free value (dynamic band first); [`AllocError::Full`] if none is left.
    pub fn allocate_next(&mut self) -> Result<R::Value, AllocError> {
        let offset = self.bitmap.allocate_next().ok_or(AllocError::Full)?;
        self.range.value_at(offset).ok_or(AllocError::Full)
    }

    /// Dry run of [`allocate_next`](Self::allocate_next): the value it would return now.
    pub fn peek_next(&self) -> Result<R::Value, AllocError> {
        let offset = self.bitmap.peek_next().ok_or(AllocError::Full)?;
        self.range.value_at(offset).ok_or(AllocError::Full)
    }

    /// Frees `value`; returns whether it was held (values outside the range are ignored, as
    /// upstream).
    pub fn release(&mut self, value: R::Value) -> bool {
        self.range
            .offset_of_value(value)
            .is_some_and(|o| self.bitmap.release(o))
    }

    /// Whether `value` is held.
    pub fn has(&self, value: R::Value) -> bool {
        self.range
            .offset_of_value(value)
            .is_some_and(|o| self.bitmap.has(o))
    }

    /// Number of allocatable values.
    pub fn size(&self) -> u64 {
        self.bitmap.size()
    }

    /// Number of held values.
    pub fn used(&self) -> u64 {
        self.bitmap.used()
    }

    /// Number of free values.
    pub fn free(&self) -> u64 {
        self.bitmap.stats().free
    }

    /// The band `value` belongs to, or `None` outside the range.
    pub fn band_of(&self, value: R::Value) -> Option<Band> {
        let offset = self.range.offset_of_value(value)?;
        Some(if offset < self.range.static_band_size() {
            Band::Static
        } else {
            Band::Dynamic
        })
    }

    /// Size and occupancy of one band.
    pub fn band_stats(&self, band: Band) -> BandStats {
        self.bitmap.band_stats(band)
    }

    /// Held values in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = R::Value> + '_ {
        self.bitmap.iter().filter_map(|o| self.range.value_at(o))
    }

    /// The allocation state, for storage in an API object.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            range: self.range.to_string(),
            data: self.bitmap.snapshot_data(),
        }
    }

    /// An allocator over `range` holding what `snapshot` holds.
    pub fn from_snapshot(range: R, snapshot: &Snapshot) -> Result<Self, SnapshotError> {
        let mut allocator = Self::new(range);
        allocator.restore(snapshot)?;
        Ok(allocator)
    }

    /// Replaces the held set with the snapshot's; errors (changing nothing) if the snapshot is of
    /// another range or marks values the range does not have. The next-fit position is kept.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        if !self.range.is_same_range(&snapshot.range) {
            return Err(R::mismatched());
        }
        self.bitmap.restore_data(&snapshot.data)
    }

    /// Where next-fit resumes, as offsets into the range: `(static band, dynamic band)`. Stored
    /// with the claims so that a reload or a restart does not hand a just-freed value straight
    /// back.
    pub fn cursors(&self) -> (u32, u32) {
        self.bitmap.cursors()
    }

    /// Restores [`cursors`](Self::cursors); a position outside its band restarts that band.
    pub fn set_cursors(&mut self, static_cursor: u32, dynamic_cursor: u32) {
        self.bitmap.set_cursors(static_cursor, dynamic_cursor);
    }

    /// Whether both allocators have the same range, bands and held values (next-fit position
    /// aside).
    pub fn same_state(&self, other: &Self) -> bool {
        self.range == other.range && self.bitmap.same_state(&other.bitmap)
    }

    fn offset(&self, value: R::Value) -> Result<u32, AllocError> {
        self.range
            .offset_of_value(value)
            .ok_or_else(|| self.range.not_in_range(value))
    }
}
