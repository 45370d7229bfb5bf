//! Numeric-aware ("natural") string order: `web-2` before `web-10`.
//!
//! New endpoints are placed into slices in their pods' name order. Pods whose names carry an
//! ordinal (StatefulSets, or anything numbered) tend to change together in ordinal ranges:
//! a StatefulSet rolls from the highest ordinal down, a batch job's shards flip together. In
//! byte order `p10`..`p19` sit between `p1` and `p2`, so such a range lands in several slices;
//! in natural order it stays in one, and a later flip of that range rewrites fewer slices.

use std::cmp::Ordering;

/// Compares `a` and `b` as sequences of tokens: each maximal run of ASCII digits is one token
/// compared by its numeric value (any length, no overflow), every other byte is a token of its
/// own. A number sorts where its first digit would in byte order, so this is a total order.
/// Strings equal token by token (`p01`, `p1`) fall back to byte order: the result is `Equal`
/// only for identical strings, consistent with `Eq`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (nx, rx) = split_number(x);
                let (ny, ry) = split_number(y);
                let ord = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if ord != Ordering::Equal {
                    return ord;
                }
                (x, y) = (rx, ry);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

/// Splits a leading run of digits off `s`: (its significant digits, the rest). Without
/// leading zeros, a longer run is a larger number, and equal lengths compare bytewise.
fn split_number(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    let (digits, rest) = s.split_at(end);
    let first_significant = digits.iter().position(|&b| b != b'0').unwrap_or(digits.len());
    (&digits[first_significant..], rest)
}

/// A string ordered by [`natural_cmp`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct NaturalString(pub String);

impl Ord for NaturalString {
    fn cmp(&self, other: &Self) -> Ordering {
        natural_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for NaturalString {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        use Ordering::*;
        let cases = [
            ("p2", "p10", Less),
            ("p10", "p9", Greater),
            ("web-0", "web-0", Equal),
            ("p01", "p1", Less),
            ("p1", "p01", Greater),
            ("p1a", "p01b", Less),
            ("a", "a0", Less),
            ("a-1", "a1", Less),
            ("az", "a9", Greater),
            ("a9", "a-", Greater),
            ("", "0", Less),
            ("x99999999999999999999999", "x100000000000000000000000", Less),
            ("s3-p49", "s3-p100", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(natural_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(natural_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn ordinals_sort_numerically() {
        let mut names: Vec<NaturalString> = (0..250).rev().map(|i| NaturalString(format!("p{i}"))).collect();
        names.sort();
        let want: Vec<NaturalString> = (0..250).map(|i| NaturalString(format!("p{i}"))).collect();
        assert_eq!(names, want);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a0-9z-]{0,6}"
    }

    proptest! {
        #[test]
        fn equal_only_when_identical(a in name(), b in name()) {
            prop_assert_eq!(natural_cmp(&a, &b) == Ordering::Equal, a == b);
        }

        #[test]
        fn antisymmetric(a in name(), b in name()) {
            prop_assert_eq!(natural_cmp(&a, &b), natural_cmp(&b, &a).reverse());
        }

        #[test]
        fn transitive(a in name(), b in name(), c in name()) {
            let le = |x: &str, y: &str| natural_cmp(x, y) != Ordering::Greater;
            for (x, y, z) in [(&a, &b, &c), (&a, &c, &b), (&b, &a, &c), (&b, &c, &a), (&c, &a, &b), (&c, &b, &a)] {
                if le(x, y) && le(y, z) {
                    prop_assert!(le(x, z), "{x} <= {y} <= {z} but not {x} <= {z}");
                }
            }
        }
    }
}
