//! Where the rules report violations: [`Findings`] keeps the first few in order and counts the
//! rest, so that an object with a million bad ports costs a counter, not a million errors.
//!
//! The rules report through [`Findings::report`] with a closure that builds the error: beyond the
//! cap the closure is never called, so nothing is formatted or allocated for those errors. A
//! denial then carries at most [`MAX_CAUSES`] causes and says how many more there were (see
//! [`crate::status::invalid_with_more`]).
//!
//! Ratcheting (UPDATE) needs the errors of the old object as a set: [`Known`] holds them as
//! 64-bit keyed hashes of their rendered form, at most [`KNOWN_LIMIT`] of them, and
//! [`Findings::except`] drops every new error found there.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher, RandomState};

use portico_allocators::field::{BadValue, FieldError, go_quote};

/// Longest string value an error quotes in full, in bytes; a longer one is quoted up to there
/// and followed by `... (N bytes)`. Every value a valid object can hold is far shorter.
pub const MAX_VALUE_BYTES: usize = 1024;

/// A string value for an error, bounded (see [`MAX_VALUE_BYTES`]).
pub fn bad_str(s: &str) -> BadValue {
    if s.len() <= MAX_VALUE_BYTES {
        return BadValue::Str(s.to_owned());
    }
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    BadValue::Raw(format!("{}... ({} bytes)", go_quote(&s[..end]), s.len()))
}

/// Most causes a denial carries; the message says how many more there were.
pub const MAX_CAUSES: usize = 100;

/// Most errors of an old object remembered for ratcheting (8 bytes each). An object with more
/// errors than this never came out of an apiserver (it validates every upstream rule, and
/// Portico's own rules cannot produce that many errors in an object etcd stores); beyond it,
/// new errors are compared with the first ones only, which can only deny more, never admit more.
pub const KNOWN_LIMIT: usize = 1 << 18;

/// The errors an object already had (ratcheting), as hashes of their rendered form.
#[derive(Debug, Clone)]
pub struct Known {
    hashes: HashSet<u64>,
    state: RandomState,
    overflowed: bool,
    /// The hashes in the order they were first reported, kept by a phase's sink
    /// ([`Findings::fork`]): joined, its hashes count against [`KNOWN_LIMIT`] in report order,
    /// so the same errors are remembered as when they are reported into one sink.
    order: Option<Vec<u64>>,
}

impl Default for Known {
    fn default() -> Self {
        Known {
            hashes: HashSet::new(),
            state: RandomState::new(),
            overflowed: false,
            order: None,
        }
    }
}

impl Known {
    /// The hash of an error's rendered form, rendered straight into the hasher (no string is
    /// built: an UPDATE may compare a million errors).
    fn key(&self, e: &FieldError) -> u64 {
        struct Hashing<H>(H);
        impl<H: Hasher> std::fmt::Write for Hashing<H> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        let mut hashing = Hashing(self.state.build_hasher());
        // Writing into a hasher cannot fail.
        let _ = write!(hashing, "{e}");
        hashing.0.finish()
    }

    fn insert(&mut self, e: &FieldError) {
        if self.hashes.len() >= KNOWN_LIMIT {
            self.overflowed = true;
            return;
        }
        let key = self.key(e);
        self.remember(key);
    }

    fn remember(&mut self, key: u64) {
        if self.hashes.insert(key)
            && let Some(order) = &mut self.order
        {
            order.push(key);
        }
    }

    /// Whether an error with this rendered form is known.
    pub fn contains(&self, e: &FieldError) -> bool {
        !self.hashes.is_empty() && self.hashes.contains(&self.key(e))
    }

    /// How many distinct errors are remembered.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no error is remembered.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether the old object had more errors than [`KNOWN_LIMIT`].
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

#[derive(Debug)]
enum Mode<'k> {
    /// Keep the first `cap` errors, count the rest.
    Keep,
    /// The same, leaving out the errors the old object already had.
    Except(&'k Known),
    /// Remember every error's hash (the old object of an UPDATE); keep none.
    Record(Known),
}

/// Violations reported by the rules: the first `cap` kept in order, the others counted.
#[derive(Debug)]
pub struct Findings<'k> {
    kept: Vec<FieldError>,
    more: usize,
    cap: usize,
    mode: Mode<'k>,
}

impl Default for Findings<'_> {
    fn default() -> Self {
        Findings::capped(MAX_CAUSES)
    }
}

impl<'k> Findings<'k> {
    /// Keeps every error (the typed, uncapped API of [`crate::validation`]).
    pub fn all() -> Self {
        Findings::capped(usize::MAX)
    }

    /// Keeps the first `cap` errors and counts the others.
    pub fn capped(cap: usize) -> Self {
        Findings {
            kept: Vec::new(),
            more: 0,
            cap,
            mode: Mode::Keep,
        }
    }

    /// Like [`Findings::capped`], leaving out the errors in `known` (ratcheting).
    pub fn except(cap: usize, known: &'k Known) -> Self {
        Findings {
            mode: Mode::Except(known),
            ..Findings::capped(cap)
        }
    }

    /// Remembers every error as a hash (see [`Findings::into_known`]).
    pub fn record() -> Self {
        Findings {
            mode: Mode::Record(Known::default()),
            ..Findings::capped(0)
        }
    }

    /// An empty sink of the same kind (same cap, same known errors): rules that report in a
    /// different order than they find use one per phase and [`join`](Self::join) them.
    pub fn fork(&self) -> Self {
        let mode = match &self.mode {
            Mode::Keep => Mode::Keep,
            Mode::Except(k) => Mode::Except(k),
            Mode::Record(k) => Mode::Record(Known {
                hashes: HashSet::new(),
                state: k.state.clone(),
                overflowed: false,
                order: Some(Vec::new()),
            }),
        };
        Findings {
            kept: Vec::new(),
            more: 0,
            cap: self.cap,
            mode,
        }
    }

    /// Appends the findings of a phase that comes after everything reported here.
    pub fn join(&mut self, other: Findings<'k>) {
        if let (Mode::Record(mine), Mode::Record(theirs)) = (&mut self.mode, other.mode) {
            mine.overflowed |= theirs.overflowed;
            // A fork always keeps the order; `join` takes no other sink.
            for h in theirs.order.unwrap_or_default() {
                if mine.hashes.len() >= KNOWN_LIMIT {
                    mine.overflowed = true;
                    break;
                }
                mine.remember(h);
            }
            return;
        }
        for e in other.kept {
            self.keep(e);
        }
        self.more += other.more;
    }

    /// Reports one violation; `make` is only called when the error is kept (or, for ratcheting,
    /// compared).
    pub fn report(&mut self, make: impl FnOnce() -> FieldError) {
        match &mut self.mode {
            Mode::Keep => {
                if self.kept.len() < self.cap {
                    self.kept.push(make());
                } else {
                    self.more += 1;
                }
            }
            // Nothing known (the old object had no error): every error is new, and one beyond
            // the cap is counted without being built, as in `Keep`.
            Mode::Except(known) if known.is_empty() => {
                if self.kept.len() < self.cap {
                    self.kept.push(make());
                } else {
                    self.more += 1;
                }
            }
            Mode::Except(known) => {
                let e = make();
                if !known.contains(&e) {
                    self.keep(e);
                }
            }
            Mode::Record(known) => {
                if !known.overflowed {
                    known.insert(&make());
                }
            }
        }
    }

    /// Reports an error already built.
    pub fn push(&mut self, e: FieldError) {
        self.report(|| e);
    }

    fn keep(&mut self, e: FieldError) {
        if self.kept.len() < self.cap {
            self.kept.push(e);
        } else {
            self.more += 1;
        }
    }

    /// How many violations were reported (kept and counted).
    pub fn len(&self) -> usize {
        match &self.mode {
            Mode::Record(k) => k.hashes.len(),
            _ => self.kept.len() + self.more,
        }
    }

    /// Whether nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept errors, in order.
    pub fn kept(&self) -> &[FieldError] {
        &self.kept
    }

    /// The kept errors, to fill in details found later (`elsewhere` lists of probe ports).
    pub(crate) fn kept_mut(&mut self) -> &mut [FieldError] {
        &mut self.kept
    }

    /// How many errors were counted but not kept.
    pub fn more(&self) -> usize {
        self.more
    }

    /// The kept errors and the number of the others.
    pub fn into_parts(self) -> (Vec<FieldError>, usize) {
        (self.kept, self.more)
    }

    /// The kept errors (all of them for [`Findings::all`]).
    pub fn into_vec(self) -> Vec<FieldError> {
        self.kept
    }

    /// The hashes remembered by a [`Findings::record`] sink (empty for the other kinds).
    pub fn into_known(self) -> Known {
        match self.mode {
            Mode::Record(k) => k,
            _ => Known::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use portico_allocators::field::BadValue;

    use super::*;

    fn err(i: usize) -> FieldError {
        FieldError::invalid(format!("spec.ports[{i}].port"), BadValue::Int(0), "x")
    }

    #[test]
    fn long_values_are_cut() {
        assert_eq!(bad_str("ab"), BadValue::Str("ab".into()));
        let long = "é".repeat(MAX_VALUE_BYTES);
        let BadValue::Raw(r) = bad_str(&long) else {
            panic!()
        };
        assert!(
            r.ends_with(&format!("\"... ({} bytes)", 2 * MAX_VALUE_BYTES)),
            "{r}"
        );
        assert!(r.len() < MAX_VALUE_BYTES + 32);
    }

    #[test]
    fn keeps_the_first_and_counts_the_rest_without_building_them() {
        let mut f = Findings::capped(2);
        let mut built = 0;
        for i in 0..5 {
            f.report(|| {
                built += 1;
                err(i)
            });
        }
        assert_eq!(built, 2);
        assert_eq!((f.kept().len(), f.more(), f.len()), (2, 3, 5));
        assert_eq!(f.kept()[1], err(1));
    }

    #[test]
    fn phases_join_in_order() {
        let mut a = Findings::capped(3);
        let mut b = a.fork();
        b.push(err(10));
        b.push(err(11));
        a.push(err(0));
        a.push(err(1));
        a.join(b);
        assert_eq!(a.kept(), &[err(0), err(1), err(10)]);
        assert_eq!(a.more(), 1);
    }

    #[test]
    fn with_nothing_known_nothing_beyond_the_cap_is_built() {
        let known = Findings::record().into_known();
        let mut f = Findings::except(2, &known);
        let mut built = 0;
        for i in 0..5 {
            f.report(|| {
                built += 1;
                err(i)
            });
        }
        assert_eq!((built, f.kept().len(), f.more()), (2, 2, 3));
    }

    #[test]
    fn a_joined_phase_is_remembered_in_report_order() {
        // The old object's errors fill the limit inside a later phase: the errors remembered
        // are the phase's first ones, as when everything is reported into one sink.
        let mut one = Findings::record();
        let mut old = Findings::record();
        for i in 0..KNOWN_LIMIT - 2 {
            one.push(err(i));
            old.push(err(i));
        }
        let mut phase = old.fork();
        for i in 0..100 {
            let e = err(1_000_000 + i);
            one.push(e.clone());
            phase.push(e);
        }
        old.join(phase);
        let (one, old) = (one.into_known(), old.into_known());
        assert!(one.overflowed() && old.overflowed());
        for i in 0..100 {
            let e = err(1_000_000 + i);
            assert_eq!(old.contains(&e), one.contains(&e), "error {i}");
            assert_eq!(old.contains(&e), i < 2, "error {i}");
        }
    }

    #[test]
    fn ratcheting_leaves_known_errors_out() {
        let mut old = Findings::record();
        old.push(err(1));
        let mut phase = old.fork();
        phase.push(err(2));
        old.join(phase);
        let known = old.into_known();
        assert_eq!(known.len(), 2);
        let mut new = Findings::except(10, &known);
        for i in 0..4 {
            new.push(err(i));
        }
        assert_eq!(new.kept(), &[err(0), err(3)]);
    }
}
