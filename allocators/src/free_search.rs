//! Finding the first free offset at or after a position without walking the used bitmap.

use roaring::RoaringBitmap;

// Why a fullness summary rather than a second roaring bitmap of free offsets: a fresh free set is
// the whole range, which roaring only keeps small as run containers, and roaring never turns a
// fragmented run container back into an array/bitmap one, so churn would make every update an
// O(runs) memmove (and without runs a /96 free set is 512 MiB). Rank/select on the used bitmap
// costs a binary search of rank() calls, each linear in the container count.
//
// Instead: one bit per 64-offset block ("every offset in it is used"), grouped in 2^16-offset
// pages allocated on first use, plus one bit per page. A search skips full pages and blocks with
// word scans and asks roaring only about the one non-full block it lands in (at most 64 bits).
// Memory: 128 bytes per page holding a full block (2 KiB for a /12) plus 8 bytes per page slot
// (512 KiB for a /96).

const BLOCK_SHIFT: u32 = 6;
const PAGE_SHIFT: u32 = 16;
const BLOCKS_PER_PAGE: usize = 1 << (PAGE_SHIFT - BLOCK_SHIFT);
const PAGE_WORDS: usize = BLOCKS_PER_PAGE / 64;

type Page = Box<[u64; PAGE_WORDS]>;

/// Fullness summary of a used-offset bitmap over `[0, size)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FreeSearch {
    size: u64,
    pages: Vec<Option<Page>>,
    full_pages: Vec<u64>,
}

impl FreeSearch {
    pub(crate) fn new(size: u64) -> Self {
        let npages = size.div_ceil(1 << PAGE_SHIFT) as usize;
        FreeSearch {
            size,
            pages: vec![None; npages],
            full_pages: vec![0; npages.div_ceil(64)],
        }
    }

    /// Records that `offset` (< size) was just added to `used`.
    pub(crate) fn inserted(&mut self, used: &RoaringBitmap, offset: u32) {
        if self.mark_block_if_full(used, offset >> BLOCK_SHIFT) {
            let page = (offset >> PAGE_SHIFT) as usize;
            if self.page_complete(page) {
                set_bit(&mut self.full_pages, page);
            }
        }
    }

    /// Records that `offset` was just removed from `used`.
    pub(crate) fn removed(&mut self, offset: u32) {
        let page = (offset >> PAGE_SHIFT) as usize;
        if let Some(Some(words)) = self.pages.get_mut(page) {
            clear_bit(&mut words[..], block_in_page(offset));
        }
        if page < self.full_pages.len() * 64 {
            clear_bit(&mut self.full_pages, page);
        }
    }

    /// Recomputes the summary from scratch; every offset of `used` must be below `size`.
    pub(crate) fn rebuild(&mut self, used: &RoaringBitmap) {
        self.pages.iter_mut().for_each(|p| *p = None);
        self.full_pages.iter_mut().for_each(|w| *w = 0);
        let mut runs = used.iter();
        while let Some(run) = runs.next_range() {
            // Runs are maximal, so a block is full exactly when the run covers it, or covers its
            // part below `size` for the range's last block.
            let (start, end) = (u64::from(*run.start()), u64::from(*run.end()) + 1);
            let first = start.div_ceil(64);
            let last = if end == self.size {
                end.div_ceil(64)
            } else {
                end / 64
            };
            self.mark_blocks_full(first, last);
        }
        for page in 0..self.pages.len() {
            if self.page_complete(page) {
                set_bit(&mut self.full_pages, page);
            }
        }
    }

    /// Sets the bits of blocks `first..last`, page by page, a word at a time.
    fn mark_blocks_full(&mut self, mut first: u64, last: u64) {
        while first < last {
            let page = (first / BLOCKS_PER_PAGE as u64) as usize;
            let page_end = ((page as u64 + 1) * BLOCKS_PER_PAGE as u64).min(last);
            let words = self.pages[page].get_or_insert_with(|| Box::new([0; PAGE_WORDS]));
            let mut bit = (first % BLOCKS_PER_PAGE as u64) as usize;
            let end_bit = bit + (page_end - first) as usize;
            while bit < end_bit {
                let n = (64 - bit % 64).min(end_bit - bit);
                let mask = if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << (bit % 64)
                };
                words[bit / 64] |= mask;
                bit += n;
            }
            first = page_end;
        }
    }

    /// The first offset in `[from, to)` that is not in `used`; `to` must not exceed `size`.
    pub(crate) fn first_free(&self, used: &RoaringBitmap, from: u32, to: u64) -> Option<u32> {
        let mut x = u64::from(from);
        while x < to {
            let page = (x >> PAGE_SHIFT) as usize;
            let page_start = (page as u64) << PAGE_SHIFT;
            if test_bit(&self.full_pages, page) {
                x = (next_clear_bit(&self.full_pages, page + 1) as u64) << PAGE_SHIFT;
                continue;
            }
            let block = ((x >> BLOCK_SHIFT) as usize) % BLOCKS_PER_PAGE;
            if let Some(words) = &self.pages[page]
                && test_bit(&words[..], block)
            {
                let next = next_clear_bit(&words[..], block + 1);
                x = page_start + ((next as u64) << BLOCK_SHIFT);
                continue;
            }
            // x < to <= size <= 2^32, so these narrowings are exact.
            let at = x as u32;
            if !used.contains(at) {
                return Some(at);
            }
            let block_end = (((x >> BLOCK_SHIFT) + 1) << BLOCK_SHIFT).min(to);
            let last = (block_end - 1) as u32;
            let after_run = used
                .range(at..=last)
                .next_range()
                .map_or(x, |r| u64::from(*r.end()) + 1);
            if after_run < block_end {
                return Some(after_run as u32);
            }
            x = block_end;
        }
        None
    }

    /// Sets the block's bit if all its offsets below `size` are used; true if it did.
    fn mark_block_if_full(&mut self, used: &RoaringBitmap, block: u32) -> bool {
        let start = u64::from(block) << BLOCK_SHIFT;
        let end = (start + 64).min(self.size);
        if end <= start || !used.contains_range((start as u32)..=((end - 1) as u32)) {
            return false;
        }
        let page = (start >> PAGE_SHIFT) as usize;
        let words = self.pages[page].get_or_insert_with(|| Box::new([0; PAGE_WORDS]));
        set_bit(&mut words[..], (block as usize) % BLOCKS_PER_PAGE);
        true
    }

    /// Whether every block of `page` that lies below `size` is marked full.
    fn page_complete(&self, page: usize) -> bool {
        let Some(words) = &self.pages[page] else {
            return false;
        };
        let page_start = (page as u64) << PAGE_SHIFT;
        let blocks = (self.size - page_start).div_ceil(64).min(BLOCKS_PER_PAGE as u64) as usize;
        let (whole, rest) = (blocks / 64, blocks % 64);
        let tail_mask = (1u64 << rest).wrapping_sub(1);
        words[..whole].iter().all(|w| *w == u64::MAX) && (rest == 0 || words[whole] & tail_mask == tail_mask)
    }
}

fn block_in_page(offset: u32) -> usize {
    ((offset >> BLOCK_SHIFT) as usize) % BLOCKS_PER_PAGE
}

fn test_bit(words: &[u64], bit: usize) -> bool {
    words.get(bit / 64).is_some_and(|w| w >> (bit % 64) & 1 == 1)
}

fn set_bit(words: &mut [u64], bit: usize) {
    words[bit / 64] |= 1 << (bit % 64);
}

fn clear_bit(words: &mut [u64], bit: usize) {
    words[bit / 64] &= !(1 << (bit % 64));
}

/// The first clear bit at or after `from`; bits past the slice count as clear.
fn next_clear_bit(words: &[u64], from: usize) -> usize {
    let mut index = from / 64;
    let Some(first) = words.get(index) else {
        return from;
    };
    let mut free = !first & (u64::MAX << (from % 64));
    loop {
        if free != 0 {
            return index * 64 + free.trailing_zeros() as usize;
        }
        index += 1;
        match words.get(index) {
            Some(w) => free = !w,
            None => return index * 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious linear answer, to compare against.
    fn naive(used: &RoaringBitmap, from: u32, to: u64) -> Option<u32> {
        (u64::from(from)..to)
            .map(|x| x as u32)
            .find(|x| !used.contains(*x))
    }

    fn build(size: u64, used: &RoaringBitmap) -> FreeSearch {
        let mut s = FreeSearch::new(size);
        s.rebuild(used);
        s
    }

    #[test]
    fn next_clear_bit_scans_words() {
        assert_eq!(next_clear_bit(&[u64::MAX, 0b1011], 0), 66);
        assert_eq!(next_clear_bit(&[u64::MAX, u64::MAX], 3), 128);
        assert_eq!(next_clear_bit(&[0b1], 0), 1);
        assert_eq!(next_clear_bit(&[0], 70), 70);
    }

    #[test]
    fn skips_full_pages_and_blocks() {
        let size = 3 * 65536 + 100;
        let mut used = RoaringBitmap::new();
        used.insert_range(0..(size as u32));
        used.remove(2 * 65536 + 777);
        used.remove_run_compression();
        let s = build(size, &used);
        assert!(test_bit(&s.full_pages, 0) && test_bit(&s.full_pages, 1) && !test_bit(&s.full_pages, 2));
        assert!(test_bit(&s.full_pages, 3), "the partial last page is full");
        assert_eq!(s.first_free(&used, 5, size), Some(2 * 65536 + 777));
        assert_eq!(s.first_free(&used, 2 * 65536 + 778, size), None);
        assert_eq!(s.first_free(&used, 0, 2 * 65536 + 777), None);
    }

    #[test]
    fn incremental_updates_match_rebuild() {
        let size = 65536 * 2 + 65;
        let mut used = RoaringBitmap::new();
        let mut s = FreeSearch::new(size);
        for x in 0..(size as u32) {
            used.insert(x);
            s.inserted(&used, x);
        }
        assert!(s.full_pages[0] & 0b111 == 0b111);
        assert_eq!(s.first_free(&used, 0, size), None);
        for x in [
            0u32,
            63,
            64,
            65535,
            65536,
            131_071,
            131_072,
            131_135,
            (size - 1) as u32,
        ] {
            used.remove(x);
            s.removed(x);
            assert_eq!(s.first_free(&used, 0, size), Some(x), "after removing {x}");
            assert_eq!(s.first_free(&used, x, size), Some(x));
            assert_eq!(s.first_free(&used, 0, u64::from(x)), None);
            used.insert(x);
            s.inserted(&used, x);
            assert_eq!(s.first_free(&used, 0, size), None);
        }
    }

    #[test]
    fn largest_range_edges() {
        let size = u64::from(u32::MAX);
        let mut used = RoaringBitmap::new();
        let mut s = FreeSearch::new(size);
        assert_eq!(s.first_free(&used, u32::MAX - 1, size), Some(u32::MAX - 1));
        let last_block = (u32::MAX - 1) & !63;
        for x in last_block..u32::MAX {
            used.insert(x);
            s.inserted(&used, x);
        }
        assert_eq!(s.first_free(&used, last_block, size), None);
        assert_eq!(s.first_free(&used, last_block - 1, size), Some(last_block - 1));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn agrees_with_linear_scan(
            size in 1u64..200_000,
            runs in proptest::collection::vec((0u32..200_000, 0u32..70_000), 0..6),
            holes in proptest::collection::vec(0u32..200_000, 0..20),
            probes in proptest::collection::vec((0u32..200_000, 0u64..200_001), 1..20),
        ) {
            let mut used = RoaringBitmap::new();
            for (start, len) in runs {
                let end = (u64::from(start) + u64::from(len)).min(size);
                if u64::from(start) < end {
                    used.insert_range(start..(end as u32));
                }
            }
            for h in holes {
                used.remove(h);
            }
            used.remove_run_compression();
            let s = build(size, &used);
            let mut incremental = FreeSearch::new(size);
            for x in &used {
                incremental.inserted(&used, x);
            }
            proptest::prop_assert_eq!(&incremental, &s, "rebuild and per-insert updates disagree");
            for (from, to) in probes {
                let to = to.min(size);
                let from = from.min(to as u32);
                proptest::prop_assert_eq!(s.first_free(&used, from, to), naive(&used, from, to));
            }
        }
    }
}
