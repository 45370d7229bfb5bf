//! A serde `Deserializer` for JSON text that is known to be valid: the text of a `&RawValue`.
//!
//! serde_json checks every `RawValue` it makes, and the webhook's are slices of a review body it
//! parsed in full before anything else ([`crate::review::decode`]). Reading them again with
//! serde_json checks them again, character by character, and the rules read the object of a
//! review several times (its members, then a list, then each element). [`Trusted`] reads such
//! text without checking it: it finds the end of a value by counting brackets and skipping
//! strings, and hands strings without escapes and integers without fraction or exponent to the
//! visitor itself, as serde_json would (`visit_borrowed_str`, `visit_u64`, `visit_i64`). Every
//! other value (an escaped string, a float, a number of more than 18 digits, `-0`, a value of
//! a type the visitor did not ask for) is given to serde_json, so a visitor receives what it
//! would receive from serde_json and reports the same errors. The differences, none of which
//! the rules can see:
//! * errors carry no position (or one inside the value serde_json was given), which
//!   [`message`](super::message) removes from serde_json's errors anyway;
//! * map keys are always handed over as strings, where serde_json parses a key as a number for
//!   a numeric key type: no type the rules read has one;
//! * a value handed to serde_json whole (an enum, a 128-bit integer, bytes: none of which the
//!   rules read) starts serde_json's nesting limit afresh.
//!
//! A `&RawValue` member is handed out as serde_json's own `&RawValue` deserializer does it (the
//! newtype [`RAW_VALUE_TOKEN`]), so capturing a member costs finding its end, not checking it.

use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Error;
use serde_json::value::RawValue;

/// The newtype name through which serde_json hands out a `&RawValue`: its deserializer answers
/// `deserialize_newtype_struct(RAW_VALUE_TOKEN)` with a map of one entry, this name as key and
/// the value's text as a borrowed string (serde_json's `raw::BorrowedRawDeserializer`).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Nested lists and objects decoded (not skipped) at most this deep, as serde_json's default.
const MAX_DEPTH: u16 = 128;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The zero bytes of `x`: `0x80` in each, exactly (no carry from one byte into the next).
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// The bytes of `w` (eight of the text, the first in the low byte) equal to `c` (see
/// [`zero_bytes`]).
fn bytes_equal(w: u64, c: u8) -> u64 {
    zero_bytes(w ^ (ONES * u64::from(c)))
}

/// Eight bytes of the text from `i`, if there are eight.
fn word(b: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Where the value that starts at `b[i]` ends (valid JSON, `i` at its first byte).
///
/// Lists and objects: brackets are counted eight bytes at a time while no string starts (an
/// 8 MB list of `{}` or of numbers has none), byte by byte around strings, which are skipped
/// whole: the first bracket that brings the count back to zero closes the value.
fn skip_value(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => skip_nested(b, i),
        // A number or a literal: up to the next delimiter.
        _ => {
            let mut i = i;
            while let Some(c) = b.get(i) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    break;
                }
                i += 1;
            }
            i
        }
    }
}

/// [`skip_value`] of a list or an object.
fn skip_nested(b: &[u8], mut i: usize) -> usize {
    let mut depth: u64 = 0;
    // Byte by byte first: most values are short (`{}`, a port), and the eight-byte steps below
    // only pay off over long stretches.
    let mut end = (i + 16).min(b.len());
    loop {
        // Byte by byte, strings skipped whole, until sixteen bytes pass without one (a list of
        // short strings is read faster so than by trying eight bytes at a time between them).
        while let Some(&c) = b.get(i..end).and_then(|rest| rest.first()) {
            match c {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                b'"' => {
                    i = skip_string(b, i);
                    end = (i + 16).min(b.len());
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        // Eight bytes at a time while no string starts (an 8 MB list of `{}` or of numbers has
        // none): brackets are counted, and the first that brings the count to zero closes the
        // value.
        while let Some(w) = word(b, i)
            && bytes_equal(w, b'"') == 0
        {
            let opens = bytes_equal(w, b'{') | bytes_equal(w, b'[');
            let closes = bytes_equal(w, b'}') | bytes_equal(w, b']');
            if depth > 8 {
                // Eight bytes cannot close it: only the count changes.
                depth = depth + u64::from(opens.count_ones()) - u64::from(closes.count_ones());
            } else {
                // Prefix sums: count each byte 1, an opening bracket 2, a closing one 0. The sum
                // S(k) over bytes 0..=k exceeds k + 1 by the change of depth, so byte k closes
                // the value when S(k) = k + 1 - depth. Multiplying by 0x0101... adds each byte
                // into all those above it (sums stay within 0..=16: no carries); the 0x80 in
                // every byte keeps the subtraction from borrowing across bytes.
                let counts = ONES + (opens >> 7) - (closes >> 7);
                let sums = counts.wrapping_mul(ONES);
                let closing = (0x0807_0605_0403_0201 | HIGHS) - depth * ONES;
                let hit = zero_bytes((sums | HIGHS) ^ closing);
                if hit != 0 {
                    return i + (hit.trailing_zeros() / 8) as usize + 1;
                }
                depth = depth + (sums >> 56) - 8;
            }
            i += 8;
        }
        // A string starts in the next eight bytes, or fewer are left.
        if i >= b.len() {
            return b.len();
        }
        end = (i + 16).min(b.len());
    }
}

/// Where the string whose opening quote is `b[i]` ends (after its closing quote). Eight bytes
/// at a time, escapes included (a string may be megabytes of `\u00e9`): each quote or
/// backslash of a word is looked at in turn, a backslash passing over the byte after it.
fn skip_string(b: &[u8], i: usize) -> usize {
    let mut i = i + 1;
    while let Some(w) = word(b, i) {
        let mut hits = bytes_equal(w, b'"') | bytes_equal(w, b'\\');
        // The first byte of this word not escaped by the last backslash seen.
        let mut from = 0;
        while hits != 0 {
            let at = (hits.trailing_zeros() / 8) as usize;
            hits &= hits - 1;
            if at < from {
                continue;
            }
            if b.get(i + at) == Some(&b'"') {
                return i + at + 1;
            }
            from = at + 2;
        }
        i += from.max(8);
    }
    // Fewer than eight bytes left.
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return i + 1,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    b.len()
}

/// The first `"` or `\` at or after `i` (`b.len()` if none), eight bytes at a time: a string
/// value may be megabytes long.
fn find_quote_or_backslash(b: &[u8], mut i: usize) -> usize {
    while let Some(w) = word(b, i) {
        let hits = bytes_equal(w, b'"') | bytes_equal(w, b'\\');
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' {
            return i;
        }
        i += 1;
    }
    i
}

/// A deserializer over valid JSON text (see the module docs).
pub(crate) struct Trusted<'a> {
    text: &'a str,
    pos: usize,
    depth: u16,
}

impl<'a> Trusted<'a> {
    /// A deserializer of the value `raw` holds.
    pub(crate) fn new(raw: &'a RawValue) -> Self {
        Trusted {
            text: raw.get(),
            pos: 0,
            depth: MAX_DEPTH,
        }
    }

    /// The next byte that is not whitespace (`0` at the end), without moving past it.
    fn peek(&mut self) -> u8 {
        let b = self.text.as_bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return c;
            }
            self.pos += 1;
        }
        0
    }

    /// The text of the value here, moving past it.
    fn take_value(&mut self) -> &'a str {
        self.peek();
        let start = self.pos;
        self.pos = skip_value(self.text.as_bytes(), start).min(self.text.len());
        self.text.get(start..self.pos).unwrap_or_default()
    }

    /// The value here, moved past, for serde_json to read: everything that is not plain.
    fn serde_json(&mut self) -> serde_json::Deserializer<serde_json::de::StrRead<'a>> {
        serde_json::Deserializer::from_str(self.take_value())
    }

    /// The string here if it has no escape (its text is its value), moving past it.
    fn plain_str(&mut self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        let start = self.pos + 1;
        let end = find_quote_or_backslash(b, start);
        if b.get(end) != Some(&b'"') {
            return None;
        }
        let s = self.text.get(start..end)?;
        self.pos = end + 1;
        Some(s)
    }

    /// The integer here, as serde_json reads one (`Ok` for a `u64`, `Err` for a negative
    /// `i64`), moving past it; `None` for anything serde_json reads otherwise: a fraction, an
    /// exponent, `-0` (a float to serde_json), more than 18 digits (perhaps a float).
    fn plain_int(&mut self) -> Option<Result<u64, i64>> {
        let b = self.text.as_bytes();
        let negative = b.get(self.pos) == Some(&b'-');
        let start = self.pos + usize::from(negative);
        let mut end = start;
        let mut n: u64 = 0;
        while let Some(&c) = b.get(end).filter(|c| c.is_ascii_digit()) {
            if end - start == 18 {
                return None;
            }
            n = n * 10 + u64::from(c - b'0');
            end += 1;
        }
        if end == start || matches!(b.get(end), Some(b'.' | b'e' | b'E')) || (negative && n == 0) {
            return None;
        }
        self.pos = end;
        // At most 18 digits: the value fits an i64 either way.
        Some(if negative { Err(-(n as i64)) } else { Ok(n) })
    }

    /// Moves past the literal `null`, `true` or `false` that starts here.
    fn skip_literal(&mut self, literal: &str) {
        self.pos += literal.len();
    }

    /// Visits the list or object that starts here, as serde_json does: one level deeper, and
    /// an error if the visitor left elements unread.
    fn nested<T>(
        &mut self,
        visit: impl FnOnce(&mut Self) -> Result<T, Error>,
        close: u8,
    ) -> Result<T, Error> {
        // serde_json refuses the 128th level.
        if self.depth <= 1 {
            return Err(de::Error::custom("recursion limit exceeded"));
        }
        self.depth -= 1;
        self.pos += 1;
        let value = visit(self);
        self.depth += 1;
        let value = value?;
        match self.peek() {
            c if c == close => {
                self.pos += 1;
                Ok(value)
            }
            b',' if close == b'}' => Err(de::Error::custom("trailing comma")),
            b',' => {
                self.pos += 1;
                Err(de::Error::custom(if self.peek() == close {
                    "trailing comma"
                } else {
                    "trailing characters"
                }))
            }
            _ => Err(de::Error::custom("trailing characters")),
        }
    }

    /// Calls `each` with this reader at every element of the list that starts here, in order;
    /// returns how many there were. (What `visit_seq` does, without a visitor: a caller that
    /// looks at each element before decoding it.)
    pub(crate) fn elements(
        &mut self,
        mut each: impl FnMut(usize, &mut Self) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        self.nested(
            |de| {
                let mut n = 0;
                let mut elements = Elements { de, first: true };
                while elements.next() {
                    each(n, elements.de)?;
                    n += 1;
                }
                Ok(n)
            },
            b']',
        )
    }

    /// Whether the value here is the empty object `{}`, moving past it if it is.
    pub(crate) fn empty_object(&mut self) -> bool {
        if self.peek() != b'{' {
            return false;
        }
        let start = self.pos;
        self.pos += 1;
        if self.peek() == b'}' {
            self.pos += 1;
            return true;
        }
        self.pos = start;
        false
    }

    fn visit_seq<V: Visitor<'a>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_seq(Elements { de, first: true }), b']')
    }

    fn visit_map<V: Visitor<'a>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_map(Members { de, first: true }), b'}')
    }

    /// A number here for a visitor that wants one (serde_json's `deserialize_number`).
    fn number<V: Visitor<'a>>(
        &mut self,
        visitor: V,
        other: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::StrRead<'a>>,
            V,
        ) -> Result<V::Value, Error>,
    ) -> Result<V::Value, Error> {
        self.peek();
        match self.plain_int() {
            Some(Ok(n)) => visitor.visit_u64(n),
            Some(Err(n)) => visitor.visit_i64(n),
            None => other(&mut self.serde_json(), visitor),
        }
    }
}

/// The one-entry map through which a `&RawValue` is handed out (see [`RAW_VALUE_TOKEN`]).
struct RawEntry<'a>(Option<&'a str>);

impl<'de> MapAccess<'de> for RawEntry<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        if self.0.is_none() {
            return Ok(None);
        }
        seed.deserialize(BorrowedStrDeserializer::new(RAW_VALUE_TOKEN))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let text = self.0.take().unwrap_or("null");
        seed.deserialize(BorrowedStrDeserializer::new(text))
    }
}

struct Elements<'t, 'a> {
    de: &'t mut Trusted<'a>,
    first: bool,
}

impl Elements<'_, '_> {
    /// Moves to the next element; `false` at the end of the list.
    fn next(&mut self) -> bool {
        match self.de.peek() {
            b']' => return false,
            b',' if !self.first => {
                self.de.pos += 1;
            }
            _ => {}
        }
        self.first = false;
        true
    }
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if !self.next() {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

struct Members<'t, 'a> {
    de: &'t mut Trusted<'a>,
    first: bool,
}

impl<'de> MapAccess<'de> for Members<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.de.peek() {
            b'}' => return Ok(None),
            b',' if !self.first => {
                self.de.pos += 1;
                self.de.peek();
            }
            _ => {}
        }
        self.first = false;
        // Keys are strings, handed to the visitor as strings. serde_json decodes every key, even
        // one the visitor ignores, so an escaped key is decoded here too (a lone surrogate is
        // an error, as there). Unlike serde_json, a key is never parsed as a number: no type
        // the rules read has keys of another type than strings.
        match self.de.plain_str() {
            Some(key) => seed.deserialize(BorrowedStrDeserializer::new(key)).map(Some),
            None => {
                let key: String = serde_json::from_str(self.de.take_value())?;
                seed.deserialize(StringDeserializer::<Error>::new(key)).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        // Past the colon.
        self.de.peek();
        self.de.pos += 1;
        seed.deserialize(&mut *self.de)
    }
}

/// `deserialize_*` methods that serde_json answers for every value this reader does not
/// read itself.
macro_rules! by_serde_json {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            (&mut self.serde_json()).$method(visitor)
        })*
    };
}

/// Numbers: plain integers here, the others by serde_json.
macro_rules! numbers {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.number(visitor, |de, v| de.$method(v))
        })*
    };
}

impl<'de> Deserializer<'de> for &mut Trusted<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek() {
            b'{' => self.visit_map(visitor),
            b'[' => self.visit_seq(visitor),
            b'"' => match self.plain_str() {
                Some(s) => visitor.visit_borrowed_str(s),
                None => (&mut self.serde_json()).deserialize_any(visitor),
            },
            b'n' => {
                self.skip_literal("null");
                visitor.visit_unit()
            }
            b't' | b'f' => self.deserialize_bool(visitor),
            _ => self.number(visitor, |de, v| de.deserialize_any(v)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek() {
            b't' => {
                self.skip_literal("true");
                visitor.visit_bool(true)
            }
            b'f' => {
                self.skip_literal("false");
                visitor.visit_bool(false)
            }
            _ => (&mut self.serde_json()).deserialize_bool(visitor),
        }
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f32 deserialize_f64
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == b'"'
            && let Some(s) = self.plain_str()
        {
            return visitor.visit_borrowed_str(s);
        }
        (&mut self.serde_json()).deserialize_str(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == b'n' {
            self.skip_literal("null");
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == b'n' {
            self.skip_literal("null");
            return visitor.visit_unit();
        }
        (&mut self.serde_json()).deserialize_unit(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == RAW_VALUE_TOKEN {
            let text = self.take_value();
            return visitor.visit_map(RawEntry(Some(text)));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == b'[' {
            return self.visit_seq(visitor);
        }
        (&mut self.serde_json()).deserialize_seq(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == b'{' {
            return self.visit_map(visitor);
        }
        (&mut self.serde_json()).deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // serde_json reads a struct from a list too (its fields in order).
        match self.peek() {
            b'{' => self.visit_map(visitor),
            b'[' => self.visit_seq(visitor),
            _ => (&mut self.serde_json()).deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        (&mut self.serde_json()).deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.take_value();
        visitor.visit_unit()
    }

    by_serde_json! {
        deserialize_i128 deserialize_u128 deserialize_bytes deserialize_byte_buf
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    use serde_json::Value;

    use super::*;
    use crate::validation::json::{IntOrStr, Obj, Text, message};

    #[derive(Deserialize, Default, Debug)]
    #[serde(default, expecting = "Doc")]
    struct Doc<'a> {
        #[serde(borrow)]
        name: Option<Text<'a>>,
        port: Option<i32>,
        big: Option<u64>,
        neg: Option<i64>,
        small: Option<u8>,
        float: Option<f64>,
        flag: Option<bool>,
        #[serde(rename = "targetPort", borrow)]
        target_port: Option<IntOrStr<'a>>,
        #[serde(borrow)]
        raw: Option<&'a RawValue>,
        #[serde(borrow)]
        list: Option<Vec<Text<'a>>>,
        owned: Option<String>,
        #[serde(borrow)]
        cow: Option<Cow<'a, str>>,
        unit: Option<()>,
        map: Option<BTreeMap<String, String>>,
        #[serde(borrow)]
        inner: Option<Box<Obj<Doc<'a>>>>,
    }

    /// What serde_json makes of `text` as `T`, and what [`Trusted`] makes of it: the same value
    /// (compared as printed: a `RawValue` has no `==`), or errors with the same message once
    /// serde_json's position is removed.
    fn same<'a, T: Deserialize<'a> + Debug>(raw: &'a RawValue) {
        let by_serde_json = T::deserialize(raw)
            .map(|v| format!("{v:?}"))
            .map_err(|e| message(&e));
        let trusted = T::deserialize(&mut Trusted::new(raw))
            .map(|v| format!("{v:?}"))
            .map_err(|e| message(&e));
        assert_eq!(trusted, by_serde_json, "{}", raw.get());
    }

    fn all_types(text: &str) {
        let raw: Box<RawValue> = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(_) => return,
        };
        same::<Value>(&raw);
        same::<Option<Text<'_>>>(&raw);
        same::<Text<'_>>(&raw);
        same::<IntOrStr<'_>>(&raw);
        same::<Option<i32>>(&raw);
        same::<i32>(&raw);
        same::<u16>(&raw);
        same::<i64>(&raw);
        same::<u64>(&raw);
        same::<f64>(&raw);
        same::<bool>(&raw);
        same::<()>(&raw);
        same::<String>(&raw);
        same::<Doc<'_>>(&raw);
        same::<Obj<Doc<'_>>>(&raw);
        same::<Option<Obj<Doc<'_>>>>(&raw);
        same::<Vec<Obj<Doc<'_>>>>(&raw);
        same::<Vec<Value>>(&raw);
        same::<BTreeMap<String, Value>>(&raw);
        same::<BTreeMap<Text<'_>, IgnoredAny>>(&raw);
        same::<(i32, Text<'_>)>(&raw);
        let raw_again = <&RawValue>::deserialize(&mut Trusted::new(&raw)).unwrap();
        assert_eq!(raw_again.get(), raw.get());
        assert!(IgnoredAny::deserialize(&mut Trusted::new(&raw)).is_ok());
    }

    #[test]
    fn reads_as_serde_json_does() {
        let cases = [
            "null",
            "true",
            "false",
            "0",
            "7",
            "-7",
            "-0",
            "1.5",
            "-1.5e3",
            "1e2",
            "1E+2",
            "255",
            "256",
            "65536",
            "2147483647",
            "2147483648",
            "-2147483649",
            "999999999999999999",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            r#""""#,
            r#""abc""#,
            r#""a\nb""#,
            r#""\u00e9""#,
            r#""\ud800""#,
            r#""\ud83e\udd80""#,
            r#""é🦀""#,
            r#""\"""#,
            r#""\\""#,
            "[]",
            "[1, 2, 3]",
            "[1,\"a\", [2], {\"x\": 1}]",
            " [ 1 , 2 ] ",
            r#"[7, "x"]"#,
            "{}",
            r#"{"name": "a", "port": 80}"#,
            r#"{"name": "a\u0062", "port": -1, "big": 18446744073709551615, "neg": -5}"#,
            r#"{"port": 80.0}"#,
            r#"{"port": 4294967296}"#,
            r#"{"port": "80"}"#,
            r#"{"small": 256}"#,
            r#"{"small": -1}"#,
            r#"{"float": 1}"#,
            r#"{"float": -0}"#,
            r#"{"flag": "true"}"#,
            r#"{"flag": 1}"#,
            r#"{"port": 1, "port": 2}"#,
            r#"{"name": null, "targetPort": null, "raw": null, "unit": null}"#,
            r#"{"targetPort": "http", "raw": {"a": [1, {"b": "]}"}]}, "list": ["a", "b\"c"]}"#,
            r#"{"targetPort": 1.5}"#,
            r#"{"targetPort": [1]}"#,
            r#"{"targetPort": {"a": 1}}"#,
            r#"{"targetPort": true}"#,
            r#"{"list": "a"}"#,
            r#"{"list": [1]}"#,
            r#"{"list": [null]}"#,
            r#"{"owned": "x\ty", "cow": "a\\b", "map": {"k": "v", "k\u0032": "w"}}"#,
            r#"{"map": {"k": 1}}"#,
            r#"{"unit": 0}"#,
            r#"{"inner": {"inner": {"name": "deep"}}, "name": "top"}"#,
            r#"{"inner": ["a", 1]}"#,
            r#"{"inner": 7}"#,
            r#"{"\u006eame": "escaped key", "x": {"\ud800": 1}}"#,
            r#"{"\ud800": 1}"#,
            r#"{"unknown": [[[[[]]]]], "other": {"a": {"b": null}}, "name": "z"}"#,
            r#"{ "name" : "spaced" , "port" : 1 }"#,
            "\n{\r\n\t\"port\"\t:\t2\n}\n",
            r#"["a", 1, null]"#,
            r#"[80, "http"]"#,
        ];
        for text in cases {
            all_types(text);
        }
        // Nesting at and beyond serde_json's limit, skipped and decoded.
        for n in [126, 127, 128, 129] {
            all_types(&format!("{}{}", "[".repeat(n), "]".repeat(n)));
            all_types(&format!(r#"{{"list": {}{}}}"#, "[".repeat(n), "]".repeat(n)));
        }
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        all_types(&deep);
        all_types(&format!(r#"{{"unknown": {deep}, "name": "n"}}"#));
        all_types(&format!(r#"{{"list": {deep}}}"#));
        let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        all_types(&deep_objects);
        // Strings longer than a chunk of the byte scanner, with escapes near the edges.
        for n in 0..20 {
            all_types(&format!(
                r#"{{"name": "{}\"{}", "port": 1}}"#,
                "x".repeat(n),
                "y".repeat(n)
            ));
            all_types(&format!(r#"{{"name": "{}\\", "port": 1}}"#, "x".repeat(n)));
            all_types(&format!(r#"["{}", "{}"]"#, "é".repeat(n), "\\n".repeat(n)));
        }
    }

    #[test]
    fn members_are_handed_out_raw() {
        let raw: &RawValue = serde_json::from_str(r#"{"raw": [1, {"a": "}"}], "name": "x"}"#).unwrap();
        let doc: Doc<'_> = Doc::deserialize(&mut Trusted::new(raw)).unwrap();
        assert_eq!(doc.raw.unwrap().get(), r#"[1, {"a": "}"}]"#);
        assert_eq!(doc.name.as_deref(), Some("x"));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z\"\\\\/\n\t é🦀\u{1}]{0,12}".prop_map(Value::String),
            prop_oneof![Just("name"), Just("port"), Just("targetPort"), Just("list")]
                .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            let key = prop_oneof![
                Just("name".to_owned()),
                Just("port".to_owned()),
                Just("targetPort".to_owned()),
                Just("raw".to_owned()),
                Just("list".to_owned()),
                Just("inner".to_owned()),
                Just("map".to_owned()),
                Just("flag".to_owned()),
                "[a-z\"é]{0,4}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((key, inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// `skip_value` finds the end of `text`'s value at every alignment, whatever follows it.
    fn skips(text: &str) {
        assert!(serde_json::from_str::<&RawValue>(text).is_ok(), "{text}");
        for pad in 0..9 {
            let padded = format!("{}{text},]}} \"]x", " ".repeat(pad));
            assert_eq!(skip_value(padded.as_bytes(), pad), pad + text.len(), "{padded}");
        }
    }

    #[test]
    fn skips_to_the_end_of_a_value() {
        for text in [
            "[]",
            "{}",
            "[[]]",
            r#"{"a":[1,{"b":"]]]}}"}]}"#,
            r#"["\\", "\"]", "\\\"["]"#,
            "[1,2,3,4,5,6,7,8,9,10,11,12,[[[[[[[[[[[[]]]]]]]]]]]],{}]",
            "[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]",
            "[[[[[[[[[[[[[[[[[[\"]\"]]]]]]]]]]]]]]]]]]",
            "[{},{},{},{},{},{},{},{},{},{},{},{},{},{}]",
            "[ { } , [ ] ,\n\t{ \"k\" : [ ] } ]",
            r#""a string with ] and } and \" inside""#,
            r#""\\\"\\\\\"\u00e9\u00e9\u00e9\u00e9\"\\""#,
            "12345",
            "-1.5e7",
            "true",
            "null",
        ] {
            skips(text);
        }
        for n in 0..24 {
            skips(&format!(r#""{}{}""#, "x".repeat(n), "\\u00e9".repeat(n)));
            skips(&format!(
                r#"["{}\\", "{}\"", 1]"#,
                "\\\\".repeat(n),
                "y".repeat(n)
            ));
        }
    }

    fn text_of(v: &Value, pretty: bool) -> String {
        if pretty {
            serde_json::to_string_pretty(v).unwrap()
        } else {
            serde_json::to_string(v).unwrap()
        }
    }

    proptest! {
        #[test]
        fn arbitrary_json_is_skipped_whole(v in json_value(), pretty in any::<bool>()) {
            skips(&text_of(&v, pretty));
        }

        #[test]
        fn arbitrary_json_reads_as_serde_json_does(v in json_value(), pretty in any::<bool>()) {
            all_types(&text_of(&v, pretty));
        }
    }

    /// Every string over `a`, `\\`, `"`, `]` up to seven characters, inside lists and
    /// objects, at every alignment, is skipped whole and read as serde_json reads it.
    #[test]
    fn every_short_string_is_skipped_and_read_as_serde_json_does() {
        let alphabet = ['a', '\\', '"', ']', '{'];
        let mut strings = vec![String::new()];
        let mut all = vec![String::new()];
        for _ in 0..7 {
            let mut next = Vec::new();
            for s in &strings {
                for c in alphabet {
                    let mut t = s.clone();
                    t.push(c);
                    next.push(t);
                }
            }
            all.extend(next.iter().cloned());
            strings = next;
        }
        for s in &all {
            let quoted = serde_json::to_string(s).unwrap();
            let texts = [
                quoted.clone(),
                format!("[{quoted},{quoted}]"),
                format!(r#"{{"k":{quoted},"name":{quoted}}}"#),
                format!("[[{quoted}],[[1]],{{}}]"),
            ];
            for text in &texts {
                for pad in 0..9 {
                    let padded = format!("{}{text},]}} \"]x", " ".repeat(pad));
                    assert_eq!(skip_value(padded.as_bytes(), pad), pad + text.len(), "{padded}");
                }
            }
            let raw: Box<RawValue> = serde_json::from_str(&texts[2]).unwrap();
            same::<Doc<'_>>(&raw);
            same::<BTreeMap<String, String>>(&raw);
        }
    }

    /// Random valid nests of lists and objects (depth up to 40, no strings but keys),
    /// skipped whole at every alignment.
    #[test]
    fn random_deep_nests_are_skipped_and_read_as_serde_json_does() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn value(rand: &mut dyn FnMut(u64) -> u64, depth: u32, out: &mut String) {
            let pick = if depth >= 40 { 0 } else { rand(5) };
            match pick {
                0 => out.push_str(["1", "-2", "[]", "{}", "null", "3.5e1"][rand(6) as usize]),
                1 | 2 => {
                    out.push('[');
                    for i in 0..rand(4) {
                        if i > 0 {
                            out.push_str([",", ", ", " ,"][rand(3) as usize]);
                        }
                        value(rand, depth + 1, out);
                    }
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    for i in 0..rand(3) {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(r#""k":"#);
                        value(rand, depth + 1, out);
                    }
                    out.push('}');
                }
            }
        }
        for _ in 0..3000 {
            let mut text = String::new();
            text.push('[');
            value(&mut rand, 0, &mut text);
            text.push(']');
            skips(&text);
        }
    }
}
