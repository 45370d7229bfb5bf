//! Reading objects straight from the review body, without building them.
//!
//! An AdmissionReview's `object` stays a [`RawValue`]: a slice of the request body. The rules read
//! what they need from it with small structs that borrow their strings from the body ([`Text`],
//! [`IntOrStr`]) and skip every other field without building it (serde's `IgnoredAny`), and they
//! walk long lists element by element ([`for_each`]), so an 8 MB array costs a parse, not a copy.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON string, borrowed from the body unless it had escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// An `IntOrString`, decoded as k8s-openapi decodes it (same type errors), its string borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrStr<'a> {
    /// A 32-bit integer.
    Int(i32),
    /// A string.
    Str(Text<'a>),
}

impl Default for IntOrStr<'_> {
    fn default() -> Self {
        IntOrStr::Int(0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for IntOrStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IntOrStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("IntOrString")
            }
            fn visit_i32<E: de::Error>(self, v: i32) -> Result<Self::Value, E> {
                Ok(IntOrStr::Int(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let v = v
                    .try_into()
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &"a 32-bit integer"))?;
                Ok(IntOrStr::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                let v = v
                    .try_into()
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"a 32-bit integer"))?;
                Ok(IntOrStr::Int(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(IntOrStr::Str(Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrStr::Str(Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(IntOrStr::Str(Text(Cow::Owned(v))))
            }
        }
        d.deserialize_any(V)
    }
}

/// The kind of object a decoder reads, as k8s-openapi names it in type errors (`ServicePort`).
pub trait Named {
    /// The name.
    const NAME: &'static str;
}

/// Implements [`Named`].
macro_rules! named {
    ($($t:ident => $name:literal),* $(,)?) => {
        $(impl crate::validation::json::Named for $t<'_> {
            const NAME: &'static str = $name;
        })*
    };
}
pub(crate) use named;

/// A JSON object decoded as `T` (a derived struct): a JSON array is a type error
/// (`invalid type: sequence, expected ServicePort`), as with k8s-openapi's decoders, where a
/// derived struct alone would read it as a tuple.
#[derive(Debug, Default)]
pub struct Obj<T>(pub T);

impl<T> Deref for Obj<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de> + Named> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<fn() -> T>);
        impl<'de, T: Deserialize<'de> + Named> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::NAME)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A field that is present (even as `null`, kept raw) or absent (`None`, the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Present<'a>(pub Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|r| Present(Some(r)))
    }
}

/// Whether a raw value is JSON `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// The first byte of a raw value (its type: `{`, `[`, `"`, a digit, `t`, `f`, `n`).
pub fn first_byte(raw: &RawValue) -> u8 {
    raw.get().trim_start().as_bytes().first().copied().unwrap_or(b'n')
}

/// The members of a JSON object named in `keys` (the last one when a key repeats, as a JSON
/// object decoder keeps it), raw; every other member is skipped without being built. `None`
/// when `raw` is not an object.
pub fn members<'a, const N: usize>(raw: &'a RawValue, keys: [&str; N]) -> Option<[Option<&'a RawValue>; N]> {
    if first_byte(raw) != b'{' {
        return None;
    }
    MembersSeed { keys }.deserialize(raw).ok()
}

struct MembersSeed<'k, const N: usize> {
    keys: [&'k str; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for MembersSeed<'_, N> {
    type Value = [Option<&'de RawValue>; N];
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for MembersSeed<'_, N> {
    type Value = [Option<&'de RawValue>; N];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = [None; N];
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match self.keys.iter().position(|k| *k == &*key) {
                Some(i) => out[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// Decodes a raw value as a string, if it is one.
pub fn as_text(raw: &RawValue) -> Option<Text<'_>> {
    if first_byte(raw) != b'"' {
        return None;
    }
    Text::deserialize(raw).ok()
}

/// Calls `each` for every element of a JSON array, decoded as `T`, in order; nothing but the
/// current element is built. `null` is an empty list. Returns the number of elements.
pub fn for_each<'a, T, F>(raw: &'a RawValue, each: F) -> Result<usize, serde_json::Error>
where
    T: Deserialize<'a>,
    F: FnMut(usize, T),
{
    if is_null(raw) {
        return Ok(0);
    }
    ForEach {
        each,
        marker: std::marker::PhantomData,
    }
    .deserialize(raw)
}

/// [`for_each`] whose callback may fail (e.g. a nested list that does not decode).
pub fn try_for_each<'a, T, F>(raw: &'a RawValue, each: F) -> Result<usize, serde_json::Error>
where
    T: Deserialize<'a>,
    F: FnMut(usize, T) -> Result<(), serde_json::Error>,
{
    if is_null(raw) {
        return Ok(0);
    }
    TryForEach {
        each,
        marker: std::marker::PhantomData,
    }
    .deserialize(raw)
}

struct ForEach<T, F> {
    each: F,
    marker: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T: Deserialize<'de>, F: FnMut(usize, T)> DeserializeSeed<'de> for ForEach<T, F> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(usize, T)> Visitor<'de> for ForEach<T, F> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut i = 0;
        while let Some(item) = seq.next_element::<T>()? {
            (self.each)(i, item);
            i += 1;
        }
        Ok(i)
    }
}

struct TryForEach<T, F> {
    each: F,
    marker: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T, F> DeserializeSeed<'de> for TryForEach<T, F>
where
    T: Deserialize<'de>,
    F: FnMut(usize, T) -> Result<(), serde_json::Error>,
{
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T, F> Visitor<'de> for TryForEach<T, F>
where
    T: Deserialize<'de>,
    F: FnMut(usize, T) -> Result<(), serde_json::Error>,
{
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut i = 0;
        while let Some(item) = seq.next_element::<T>()? {
            (self.each)(i, item).map_err(de::Error::custom)?;
            i += 1;
        }
        Ok(i)
    }
}

/// The number of members of a JSON object (nothing built), `None` if it is not an object.
pub fn count_members(raw: &RawValue) -> Option<usize> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
    }
    if first_byte(raw) != b'{' {
        return None;
    }
    raw.deserialize_map(V).ok()
}

/// The number of elements of a JSON array (type-checked as a sequence; elements skipped).
pub fn count(raw: &RawValue) -> Result<usize, serde_json::Error> {
    for_each::<IgnoredAny, _>(raw, |_, _| {})
}

/// serde's message without the ` at line L column C` that `serde_json` adds: positions inside a
/// slice of the body mean nothing to the reader.
pub fn message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    if e.line() == 0 {
        return s;
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match s.strip_suffix(&suffix) {
        Some(m) => m.to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let t: Text<'_> = serde_json::from_str(r#""abc""#).unwrap();
        assert!(matches!(t.0, Cow::Borrowed("abc")));
        let t: Text<'_> = serde_json::from_str(r#""a\nc""#).unwrap();
        assert!(matches!(t.0, Cow::Owned(ref s) if s == "a\nc"));
        let e = serde_json::from_str::<Text<'_>>("7").unwrap_err();
        assert_eq!(message(&e), "invalid type: integer `7`, expected a string");
    }

    #[test]
    fn int_or_string_like_k8s_openapi() {
        assert_eq!(
            serde_json::from_str::<IntOrStr<'_>>("-3").unwrap(),
            IntOrStr::Int(-3)
        );
        assert_eq!(
            serde_json::from_str::<IntOrStr<'_>>(r#""http""#).unwrap(),
            IntOrStr::Str(Text("http".into()))
        );
        let e = serde_json::from_str::<IntOrStr<'_>>("4294967296").unwrap_err();
        assert_eq!(
            message(&e),
            "invalid value: integer `4294967296`, expected a 32-bit integer"
        );
        let e = serde_json::from_str::<IntOrStr<'_>>("1.5").unwrap_err();
        assert_eq!(
            message(&e),
            "invalid type: floating point `1.5`, expected IntOrString"
        );
    }

    #[test]
    fn members_keep_the_last_and_skip_the_rest() {
        let r = raw(r#"{"a": 1, "b": [1, [2]], "a": {"x": 2}, "c": null}"#);
        let [a, c, d] = members(r, ["a", "c", "d"]).unwrap();
        assert_eq!(a.unwrap().get(), r#"{"x": 2}"#);
        assert_eq!(c.unwrap().get(), "null");
        assert!(d.is_none());
        assert!(members(raw("[1]"), ["a"]).is_none());
        assert_eq!(as_text(raw(r#""x""#)).as_deref(), Some("x"));
        assert_eq!(as_text(raw("1")), None);
    }

    #[derive(Deserialize, Default, Debug)]
    #[serde(default)]
    struct Probe<'a> {
        #[serde(borrow)]
        name: Option<Text<'a>>,
        port: Option<i32>,
    }
    named!(Probe => "Probe");

    #[test]
    fn objects_are_maps_never_tuples() {
        let p: Obj<Probe<'_>> = serde_json::from_str(r#"{"name": "a", "port": 1, "x": [1]}"#).unwrap();
        assert_eq!((p.name.as_deref(), p.port), (Some("a"), Some(1)));
        let e = serde_json::from_str::<Obj<Probe<'_>>>(r#"["a", 1]"#).unwrap_err();
        assert_eq!(message(&e), "invalid type: sequence, expected Probe");
        let e = serde_json::from_str::<Obj<Probe<'_>>>("7").unwrap_err();
        assert_eq!(message(&e), "invalid type: integer `7`, expected Probe");
        let n: Option<Obj<Probe<'_>>> = serde_json::from_str("null").unwrap();
        assert!(n.is_none());
    }

    #[test]
    fn lists_one_element_at_a_time() {
        let mut seen = Vec::new();
        let n = for_each::<i32, _>(raw("[1, 2, 3]"), |i, v| seen.push((i, v))).unwrap();
        assert_eq!((n, seen), (3, vec![(0, 1), (1, 2), (2, 3)]));
        assert_eq!(for_each::<i32, _>(raw("null"), |_, _| {}).unwrap(), 0);
        let e = for_each::<i32, _>(raw(r#""80""#), |_, _| {}).unwrap_err();
        assert_eq!(message(&e), "invalid type: string \"80\", expected a sequence");
        assert_eq!(count(raw("[{}, [], 1]")).unwrap(), 3);
    }
}
