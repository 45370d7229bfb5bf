//! The tables of port names the duplicate checks keep, small and hashed once.
//!
//! A Service or a Pod may declare a quarter of a million port names, and the table that finds
//! repeats is then most of the cost: its memory, written at random. `HashMap<&str, V>` hashes a
//! name when it looks it up, again when it inserts it, and again each time the table grows
//! (the table does not keep hashes), and takes 16 bytes an entry for the key alone.
//! [`NameTable`] hashes a name once, with std's keyed SipHash (a client cannot pick names that
//! collide), and keeps 32 bits of that hash and where the name starts in the text it was read
//! from: 8 bytes an entry besides the value, and growing the table hashes nothing. A name
//! found under its hash is compared with the name there, and one whose hash another name has
//! is kept apart, so names are never confused.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// The hasher of a table keyed by 32 bits of a keyed hash: the key, spread over 64 bits (the
/// table takes the slot from the low bits and a tag from the high ones).
#[derive(Default)]
struct StoredHash(u64);

impl Hasher for StoredHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u32(&mut self, hash: u32) {
        self.0 = u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only hashes are hashed here (`write_u32`); fold anything else anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// The bit of a place that says it is an index into the copies, not an offset in the text.
/// A name at a larger offset is copied; indices stay below it, since each copy is a name of at
/// least one byte from a review body (8 MiB by default, [`crate::WebhookConfig`]'s
/// `max_body_bytes`).
const COPY: u32 = 1 << 31;

/// A table of names and a value for each (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct NameTable<'a, V> {
    /// The text most names are read from (a review's object), each the content of a string
    /// without escapes: a name there ends at the next quote.
    text: &'a str,
    /// The names not in `text` (written with escapes, or from a typed object).
    copies: Vec<String>,
    /// Where the first name of each hash starts (in `text`, or with [`COPY`], in `copies`),
    /// and its value.
    by_hash: HashMap<u32, (u32, V), BuildHasherDefault<StoredHash>>,
    /// The names whose hash an earlier, different name has, and their values.
    others: HashMap<String, V>,
    keys: RandomState,
}

impl<'a, V> NameTable<'a, V> {
    /// An empty table of names read from `text` (names from elsewhere are copied).
    pub(crate) fn new(text: &'a str) -> Self {
        NameTable {
            text,
            copies: Vec::new(),
            by_hash: HashMap::default(),
            others: HashMap::new(),
            keys: RandomState::new(),
        }
    }

    /// The low half of a keyed 64-bit hash of `name`.
    fn hash(&self, name: &str) -> u32 {
        self.keys.hash_one(name) as u32
    }

    /// The value of `name`, and whether it was just added (with `value()`).
    pub(crate) fn get_or_insert_with(&mut self, name: &str, value: impl FnOnce() -> V) -> (&mut V, bool) {
        let hash = self.hash(name);
        match self.by_hash.entry(hash) {
            Entry::Vacant(e) => {
                let place = place(self.text, &mut self.copies, name);
                (&mut e.insert((place, value())).1, true)
            }
            Entry::Occupied(e) if name_at(self.text, &self.copies, e.get().0) == Some(name) => {
                (&mut e.into_mut().1, false)
            }
            // Another name has its hash.
            Entry::Occupied(_) => match self.others.entry(name.to_owned()) {
                Entry::Occupied(e) => (e.into_mut(), false),
                Entry::Vacant(e) => (e.insert(value()), true),
            },
        }
    }

    /// The value of `name`, if the table has it.
    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        match self.by_hash.get(&self.hash(name)) {
            None => None,
            Some((place, v)) if name_at(self.text, &self.copies, *place) == Some(name) => Some(v),
            Some(_) => self.others.get(name),
        }
    }
}

impl NameTable<'_, ()> {
    /// Adds a name; `false` if it was there already.
    pub(crate) fn insert(&mut self, name: &str) -> bool {
        self.get_or_insert_with(name, || ()).1
    }
}

/// The name that starts at `place` (see [`place`]).
fn name_at<'t>(text: &'t str, copies: &'t [String], place: u32) -> Option<&'t str> {
    if place & COPY != 0 {
        return copies.get((place & !COPY) as usize).map(String::as_str);
    }
    let rest = text.get(place as usize..)?;
    rest.split_once('"').map(|(name, _)| name)
}

/// Where `name` starts in `text`, if it is the content of a string there (a quote follows
/// it), else the index of a copy added to `copies`, with [`COPY`].
fn place(text: &str, copies: &mut Vec<String>, name: &str) -> u32 {
    let start = (name.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    // A slice of the text, with a quote after it and none in it (a string's whole content).
    let in_text = text
        .get(start..)
        .is_some_and(|rest| rest.as_ptr() == name.as_ptr())
        && text.as_bytes().get(start + name.len()) == Some(&b'"')
        && !name.contains('"');
    match u32::try_from(start) {
        Ok(start) if in_text && start < COPY => start,
        _ => {
            copies.push(name.to_owned());
            u32::try_from(copies.len() - 1).unwrap_or(u32::MAX) | COPY
        }
    }
}

/// A set of names (see [`NameTable`]).
pub(crate) type NameSet<'a> = NameTable<'a, ()>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_told_apart_by_value() {
        let text = r#"[{"name":"a"},{"name":"b"},{"name":"a"}]"#;
        let (a, b, a2) = (&text[10..11], &text[23..24], &text[36..37]);
        assert_eq!((a, b, a2), ("a", "b", "a"));
        let mut t = NameTable::<u32>::new(text);
        assert_eq!(t.get_or_insert_with(a, || 1), (&mut 1, true));
        assert_eq!(t.get_or_insert_with(b, || 2), (&mut 2, true));
        *t.get_or_insert_with(a2, || 3).0 += 10;
        assert_eq!(t.get("a"), Some(&11));
        assert_eq!(t.get(&String::from("b")), Some(&2));
        assert_eq!(t.get("c"), None);
        // Names not in the text are copies, and the same names.
        assert!(!t.get_or_insert_with("a", || 0).1);
        assert!(t.get_or_insert_with("é", || 5).1);
        assert_eq!(t.get(&String::from("é")), Some(&5));
    }

    #[test]
    fn names_that_share_a_hash_are_told_apart() {
        let text = r#"[{"name":"a"},{"name":"b"},{"name":"a"}]"#;
        let (a, b) = (&text[10..11], &text[23..24]);
        let mut names = NameSet::new(text);
        assert!(names.insert(a));
        // `a` as if its hash were `b`'s.
        let (a_hash, b_hash) = (names.hash(a), names.hash(b));
        let first = names.by_hash.remove(&a_hash).unwrap();
        names.by_hash.insert(b_hash, first);
        assert!(names.insert(b), "a different name under the same hash is new");
        assert!(!names.insert(b));
        assert!(!names.insert(&String::from("b")));
        assert_eq!(names.get(b), Some(&()));
        assert!(names.insert(&text[36..37]), "`a` is no longer under its own hash");
        assert!(!names.insert("a"));
    }

    #[test]
    fn far_past_any_growth_of_the_table() {
        let text: String = (0..100_000).map(|i| format!("\"n{i}\",")).collect();
        let names: Vec<&str> = text
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| &s[1..s.len() - 1])
            .collect();
        let mut set = NameSet::new(&text);
        assert!(names.iter().all(|n| set.insert(n)));
        assert!(names.iter().all(|n| !set.insert(n)));
        assert!(set.copies.is_empty());
    }
}
