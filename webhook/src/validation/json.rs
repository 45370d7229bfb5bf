//! Reading objects straight from the review body, without building them.
//!
//! An AdmissionReview's `object` stays a [`RawValue`]: a slice of the request body. The rules read
//! what they need from it with small structs that borrow their strings from the body ([`Text`],
//! [`IntOrStr`]) and skip every other field without building it (serde's `IgnoredAny`), and they
//! walk long lists element by element ([`for_each`]), so an 8 MB array costs a parse, not a copy.
//!
//! The body was parsed, and so checked, once in full when the review was decoded; every read
//! here goes through [`decode`] and its kin, which read a `RawValue` without checking it again
//! (see [`trusted`]): the second and later walks over an 8 MB object find where values end and
//! decode what the rules read, nothing more.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use trusted::Trusted;

mod trusted;

/// Decodes the value `raw` holds as `T`, as serde_json would, without checking the JSON again
/// (see [`trusted`]).
pub fn decode<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, serde_json::Error> {
    T::deserialize(&mut Trusted::new(raw))
}

/// [`decode`], leaving a failure to serde_json: its very error, with the position it gives,
/// which some messages show.
pub fn decode_exact<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, serde_json::Error> {
    decode(raw).or_else(|_| serde_json::from_str(raw.get()))
}

/// [`decode`] with a seed.
pub(crate) fn decode_seed<'a, S: DeserializeSeed<'a>>(
    raw: &'a RawValue,
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    seed.deserialize(&mut Trusted::new(raw))
}

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

/// A JSON object decoded as `T` (a derived struct): a JSON array is a type error
/// (`invalid type: sequence, expected ServicePort`), as with k8s-openapi's decoders, where a
/// derived struct alone would read it as a tuple. `T` names itself in that message with
/// `#[serde(expecting = "ServicePort")]`, as k8s-openapi names the type.
#[derive(Debug, Default)]
pub struct Obj<T>(pub T);

impl<T> Deref for Obj<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `T`'s own visitor, asked for a map rather than a struct: nothing in between (a list
        // of a million `{}` pays for every layer a million times).
        T::deserialize(MapOnly(d)).map(Obj)
    }
}

/// A deserializer that reads structs as maps only: `deserialize_struct` is `deserialize_map`,
/// everything else is `D`'s.
struct MapOnly<D>(D);

/// Methods of [`MapOnly`] that are `D`'s.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* visitor)
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    forward! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16(); deserialize_i32();
        deserialize_i64(); deserialize_i128(); deserialize_u8(); deserialize_u16(); deserialize_u32();
        deserialize_u64(); deserialize_u128(); deserialize_f32(); deserialize_f64(); deserialize_char();
        deserialize_str(); deserialize_string(); deserialize_bytes(); deserialize_byte_buf();
        deserialize_option(); deserialize_unit(); deserialize_seq(); deserialize_map();
        deserialize_identifier(); deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }
}

/// A value decoded as `T` where it stands, so that its errors come in document order as if
/// the field were a `T`, but kept raw: a document whose members are rarely present (a
/// container's probes) stays small, and [`get`](Checked::get) decodes one again where it is
/// used.
pub struct Checked<'a, T> {
    raw: &'a RawValue,
    marker: std::marker::PhantomData<fn() -> T>,
}

impl<'a, T: Deserialize<'a>> Checked<'a, T> {
    /// The value (it decoded once: it decodes again).
    pub fn get(&self) -> Option<T> {
        decode(self.raw).ok()
    }
}

impl<'de: 'a, 'a, T: Deserialize<'a>> Deserialize<'de> for Checked<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &'a RawValue = <&'de RawValue>::deserialize(d)?;
        decode::<T>(raw).map_err(|e| de::Error::custom(message(&e)))?;
        Ok(Checked {
            raw,
            marker: std::marker::PhantomData,
        })
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
    members_and_repeats(raw, keys).map(|(values, _)| values)
}

/// [`members`], and for each key whether it came more than once: where a derived struct
/// would refuse the object (`duplicate field`), a reader that takes its place must too.
pub fn members_and_repeats<'a, const N: usize>(
    raw: &'a RawValue,
    keys: [&str; N],
) -> Option<([Option<&'a RawValue>; N], [bool; N])> {
    if first_byte(raw) != b'{' {
        return None;
    }
    decode_seed(raw, MembersSeed { keys }).ok()
}

struct MembersSeed<'k, const N: usize> {
    keys: [&'k str; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for MembersSeed<'_, N> {
    type Value = ([Option<&'de RawValue>; N], [bool; N]);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for MembersSeed<'_, N> {
    type Value = ([Option<&'de RawValue>; N], [bool; N]);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut values, mut repeats) = ([None; N], [false; N]);
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match self.keys.iter().position(|k| *k == &*key) {
                Some(i) => {
                    repeats[i] |= values[i].is_some();
                    values[i] = Some(map.next_value::<&'de RawValue>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((values, repeats))
    }
}

/// Decodes a raw value as a string, if it is one.
pub fn as_text(raw: &RawValue) -> Option<Text<'_>> {
    if first_byte(raw) != b'"' {
        return None;
    }
    decode(raw).ok()
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
    for_each_strict(raw, each)
}

/// [`for_each`] where `null` is not a list, as for a `Vec` field.
pub fn for_each_strict<'a, T, F>(raw: &'a RawValue, mut each: F) -> Result<usize, serde_json::Error>
where
    T: Deserialize<'a>,
    F: FnMut(usize, T),
{
    decode_seed(
        raw,
        TryForEach {
            each: move |i, item| {
                each(i, item);
                Ok(())
            },
            marker: std::marker::PhantomData,
        },
    )
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
    decode_seed(
        raw,
        TryForEach {
            each,
            marker: std::marker::PhantomData,
        },
    )
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

/// A document read with [`Obj`] whose members are all optional (derived with
/// `#[serde(default)]`): the empty object `{}` decodes to its `Default`.
pub trait Document: Default {}

/// [`try_for_each`] over a list of [`Document`]s: an element `{}` is given as the default
/// document, which is what it decodes to, without decoding it (a list of a million `{}` costs
/// a scan, not a million decodes).
pub fn try_for_each_document<'a, T, F>(raw: &'a RawValue, mut each: F) -> Result<usize, serde_json::Error>
where
    T: Deserialize<'a> + Document,
    F: FnMut(usize, Obj<T>) -> Result<(), serde_json::Error>,
{
    if first_byte(raw) != b'[' {
        // `null`, or an error phrased by the reader of any list.
        return try_for_each(raw, each);
    }
    Trusted::new(raw).elements(|i, element| {
        let doc = if element.empty_object() {
            Obj(T::default())
        } else {
            Obj::<T>::deserialize(element)?
        };
        each(i, doc).map_err(de::Error::custom)
    })
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
    (&mut Trusted::new(raw)).deserialize_map(V).ok()
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
    #[serde(default, expecting = "Probe")]
    struct Probe<'a> {
        #[serde(borrow)]
        name: Option<Text<'a>>,
        port: Option<i32>,
    }

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

    impl Document for Probe<'_> {}

    #[test]
    fn documents_read_as_any_list() {
        for list in [
            r#"[{}, { }, {"name": "a"}, {"port": 2}, {}]"#,
            r#"[{}, {"name": 7}]"#,
            r#"[{}, [], {}]"#,
            r#"[{}, null]"#,
            r#"[ {} , {}, {"x": {}} ]"#,
            "[]",
            "null",
            r#"{"a": {}}"#,
            "7",
        ] {
            let raw = raw(list);
            let read = |documents: bool| {
                let mut seen = Vec::new();
                let each = |i, Obj(p): Obj<Probe<'_>>| {
                    seen.push(format!("{i}: {:?} {:?}", p.name.as_deref(), p.port));
                    Ok(())
                };
                let n = if documents {
                    try_for_each_document(raw, each)
                } else {
                    try_for_each(raw, each)
                };
                (n.map_err(|e| message(&e)), seen)
            };
            assert_eq!(read(true), read(false), "{list}");
        }
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
