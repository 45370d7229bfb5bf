//! The AdmissionReview envelope (`admission.k8s.io/v1`): decoding requests, encoding answers.
//!
//! Decoding is lenient where the apiserver may grow (unknown fields are ignored, `object` stays raw
//! JSON and only the parts a rule needs are decoded later) and strict where an answer would be
//! meaningless: a body that is not an `admission.k8s.io/v1` AdmissionReview with a `request.uid` is
//! refused with HTTP 400 and a plain-text reason (the apiserver counts it as a failed call, which
//! is what it is). Every other review gets HTTP 200 and an AdmissionReview whose `response.uid`
//! echoes the request's, even when a field of the request has the wrong type: that is answered
//! `allowed: false`, code 400, with the path of the field.
//!
//! The body is parsed once, and nothing of it is copied but the few strings of the request
//! (`uid`, `kind`, `name`, ...): `object` and `oldObject` are [`RawObject`]s, slices of the body
//! the rules read with borrowing decoders; every field Portico does not read (`userInfo`,
//! `options`, an 8 MB array anywhere) is skipped by the parser without being built. The strings
//! that are copied are bounded: a `uid` longer than [`MAX_UID_BYTES`] cannot be echoed and is
//! refused, any other longer than [`MAX_FIELD_BYTES`] is answered 400 naming the field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use kube::core::response::Status;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::status::quote_bounded;
use crate::validation::json::{Text, as_text, first_byte, members};

/// `apiVersion` of the only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of the envelope.
pub const KIND: &str = "AdmissionReview";
/// Longest `request.uid` answered, in bytes (the apiserver sends UUIDs, 36 bytes).
pub const MAX_UID_BYTES: usize = 256;
/// Longest `request.name`, `namespace`, `subResource` or `kind` field read, in bytes. Names are
/// at most 253 bytes (a DNS subdomain), kinds and namespaces 63.
pub const MAX_FIELD_BYTES: usize = 1024;

/// A JSON object of the review (`request.object`, `request.oldObject`), as sent: a slice of the
/// request body, or an owned copy ([`RawObject::into_owned`]).
#[derive(Clone)]
pub struct RawObject<'a>(Cow<'a, RawValue>);

impl<'a> RawObject<'a> {
    /// The object borrowed from a body.
    pub fn borrowed(raw: &'a RawValue) -> Self {
        RawObject(Cow::Borrowed(raw))
    }

    /// The raw JSON value.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The JSON text, exactly as sent.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The object as a `serde_json::Value` (builds the whole tree: for tests and small objects).
    pub fn to_value(&self) -> serde_json::Result<Value> {
        serde_json::from_str(self.json())
    }

    /// The object decoded as `T`, which may borrow from it.
    pub fn decode<'b, T: Deserialize<'b>>(&'b self) -> serde_json::Result<T> {
        crate::validation::json::decode(self.raw())
    }

    /// An owned copy, independent of the body.
    pub fn into_owned(self) -> RawObject<'static> {
        RawObject(Cow::Owned(self.0.into_owned()))
    }

    /// The members the rules read (`kind`, `metadata`, `spec`), found in one pass.
    pub fn head(&self) -> ObjectHead<'_> {
        match members(self.raw(), ["kind", "metadata", "spec"]) {
            Some([kind, metadata, spec]) => ObjectHead { kind, metadata, spec },
            None => ObjectHead::default(),
        }
    }

    /// A top-level string member (`kind`, `apiVersion`), if it is a string.
    pub fn str_member(&self, key: &str) -> Option<Text<'_>> {
        let [v] = members(self.raw(), [key])?;
        as_text(v?)
    }

    /// A string member of `metadata`, if both are what they should be.
    pub fn meta_str(&self, key: &str) -> Option<Text<'_>> {
        let [meta] = members(self.raw(), ["metadata"])?;
        ObjectHead {
            metadata: meta,
            ..ObjectHead::default()
        }
        .meta_str(key)
    }

    /// Whether `metadata.deletionTimestamp` is set (to anything but `null`).
    pub fn terminating(&self) -> bool {
        let Some([meta]) = members(self.raw(), ["metadata"]) else {
            return false;
        };
        ObjectHead {
            metadata: meta,
            ..ObjectHead::default()
        }
        .terminating()
    }
}

/// The top-level members of an object the rules read, raw (see [`RawObject::head`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectHead<'a> {
    /// `kind`.
    pub kind: Option<&'a RawValue>,
    /// `metadata`.
    pub metadata: Option<&'a RawValue>,
    /// `spec`.
    pub spec: Option<&'a RawValue>,
}

impl<'a> ObjectHead<'a> {
    /// `kind`, if it is a string.
    pub fn kind(&self) -> Option<Text<'a>> {
        as_text(self.kind?)
    }

    /// A string member of `metadata`, if both are what they should be.
    pub fn meta_str(&self, key: &str) -> Option<Text<'a>> {
        let [v] = members(self.metadata?, [key])?;
        as_text(v?)
    }

    /// Whether `metadata.deletionTimestamp` is set (to anything but `null`).
    pub fn terminating(&self) -> bool {
        let Some(meta) = self.metadata else {
            return false;
        };
        matches!(members(meta, ["deletionTimestamp"]), Some([Some(t)]) if first_byte(t) != b'n')
    }
}

impl fmt::Debug for RawObject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 512;
        let json = self.json();
        if json.len() <= SHOWN {
            return write!(f, "RawObject({json})");
        }
        let mut end = SHOWN;
        while !json.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "RawObject({}... ({} bytes))", &json[..end], json.len())
    }
}

impl PartialEq for RawObject<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

/// What Portico reads of `AdmissionReview.request`. Everything else (userInfo, options,
/// requestKind, ...) is ignored. `'a` is the body's lifetime: the objects are slices of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionRequest<'a> {
    /// `request.uid`, echoed in the answer.
    pub uid: String,
    /// `request.kind`: the kind of `object` (after conversion under `matchPolicy: Equivalent`).
    pub kind: GroupVersionKind,
    /// `request.subResource`, `None` when absent or empty.
    pub sub_resource: Option<String>,
    /// `request.name` (may be empty on CREATE).
    pub name: String,
    /// `request.namespace`, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `request.operation`.
    pub operation: Operation,
    /// `request.object`, raw; `None` when absent or `null` (DELETE).
    pub object: Option<RawObject<'a>>,
    /// `request.oldObject`, raw; `None` when absent or `null` (CREATE, CONNECT).
    pub old_object: Option<RawObject<'a>>,
    /// `request.dryRun`: nothing may be persisted (an allocation in particular) for this review.
    pub dry_run: bool,
}

impl AdmissionRequest<'_> {
    /// The operation's name as the apiserver spells it.
    pub fn operation_name(&self) -> &'static str {
        operation_name(&self.operation)
    }

    /// Name of the object for messages: `metadata.name` of `object` (or `oldObject`), else
    /// `request.name`, else `metadata.generateName`, else empty. At most
    /// [`crate::status::MAX_NAME_BYTES`] bytes (cut with `...`).
    pub fn object_name(&self) -> String {
        let head = self.object.as_ref().map(RawObject::head);
        self.object_name_in(head.as_ref())
    }

    /// [`object_name`](Self::object_name) with the [`ObjectHead`] of `object` already found.
    pub fn object_name_in(&self, head: Option<&ObjectHead<'_>>) -> String {
        let bounded = |s: &str| crate::status::truncate(s, crate::status::MAX_NAME_BYTES).into_owned();
        let meta = |key: &str| {
            head.and_then(|h| h.meta_str(key))
                .filter(|s| !s.is_empty())
                .map(|s| bounded(&s))
        };
        meta("name")
            .or_else(|| {
                self.old_object
                    .as_ref()
                    .and_then(|o| o.meta_str("name"))
                    .filter(|s| !s.is_empty())
                    .map(|s| bounded(&s))
            })
            .or_else(|| (!self.name.is_empty()).then(|| bounded(&self.name)))
            .or_else(|| meta("generateName"))
            .unwrap_or_default()
    }

    /// A copy independent of the body (the objects copied).
    pub fn into_owned(self) -> AdmissionRequest<'static> {
        AdmissionRequest {
            uid: self.uid,
            kind: self.kind,
            sub_resource: self.sub_resource,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            object: self.object.map(RawObject::into_owned),
            old_object: self.old_object.map(RawObject::into_owned),
            dry_run: self.dry_run,
        }
    }
}

/// The apiserver's spelling of an operation.
pub fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// A handler's decision on one review.
///
/// `status` is only sent with a refusal (the apiserver ignores it otherwise). `warnings` and
/// `audit_annotations` are sent either way. `patch` is a JSON Patch (RFC 6902) array and is only
/// ever sent from the mutating endpoint: a validating webhook that returns one is a failed call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Admit the object.
    pub allowed: bool,
    /// Why not (see [`crate::status`]).
    pub status: Option<Status>,
    /// Shown by kubectl as `Warning: ...`; sanitized before sending.
    pub warnings: Vec<String>,
    /// JSON Patch operations (mutating endpoint only).
    pub patch: Option<Value>,
    /// Audit annotations; the apiserver prefixes the keys with the webhook's name.
    pub audit_annotations: BTreeMap<String, String>,
}

impl Verdict {
    /// Admit, nothing to add.
    pub fn allow() -> Self {
        Verdict {
            allowed: true,
            ..Verdict::default()
        }
    }

    /// Refuse with `status` (build it with [`crate::status`]).
    pub fn deny(status: Status) -> Self {
        Verdict {
            allowed: false,
            status: Some(status),
            ..Verdict::default()
        }
    }

    /// The same verdict with these warnings added.
    pub fn with_warnings(mut self, warnings: impl IntoIterator<Item = String>) -> Self {
        self.warnings.extend(warnings);
        self
    }

    /// The same verdict with a JSON Patch (an array of operations).
    pub fn with_patch(mut self, patch: Value) -> Self {
        self.patch = Some(patch);
        self
    }

    /// How the verdict is counted: `allowed`, `denied` (a rule refused the object) or `error`
    /// (the review could not be judged: HTTP 400 `BadRequest` or a 5xx).
    pub fn result(&self) -> &'static str {
        if self.allowed {
            return "allowed";
        }
        match &self.status {
            Some(s) if s.code >= 500 || s.reason == crate::status::REASON_BAD_REQUEST => "error",
            _ => "denied",
        }
    }
}

/// A body that is not an AdmissionReview Portico can answer (HTTP 400, text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not JSON at all.
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("request body is not an AdmissionReview: expected a JSON object")]
    NotAnObject,
    /// `apiVersion` missing or another version.
    #[error("request body is not an {API_VERSION} AdmissionReview: apiVersion is {0}")]
    ApiVersion(String),
    /// `kind` missing or not `AdmissionReview`.
    #[error("request body is not an AdmissionReview: kind is {0}")]
    Kind(String),
    /// No `request` object.
    #[error("AdmissionReview has no request object")]
    NoRequest,
    /// No string `request.uid`: no answer could be matched to the request.
    #[error("AdmissionReview request has no uid (request.uid must be a string)")]
    NoUid,
    /// A `request.uid` too long to echo.
    #[error("AdmissionReview request.uid is {0} bytes long; at most {MAX_UID_BYTES} are answered")]
    UidTooLong(usize),
}

/// A decoded review; `'a` is the body's lifetime.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<'a> {
    /// A request the handlers can judge.
    Request(Box<AdmissionRequest<'a>>),
    /// A well-formed review whose request has a field of the wrong type or value: answered
    /// `allowed: false`, 400 `BadRequest`, with this message.
    Unreadable {
        /// `request.uid`.
        uid: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl Decoded<'_> {
    /// A copy independent of the body.
    pub fn into_owned(self) -> Decoded<'static> {
        match self {
            Decoded::Request(r) => Decoded::Request(Box::new((*r).into_owned())),
            Decoded::Unreadable { uid, message } => Decoded::Unreadable { uid, message },
        }
    }
}

/// How a value is named in messages: `null`, `the boolean true`, `the number 7`,
/// `the string "x"` (at most 256 bytes of it quoted), `an array`, `an object`.
fn describe(v: &RawValue) -> String {
    match first_byte(v) {
        b'n' => "null".into(),
        b't' => "the boolean true".into(),
        b'f' => "the boolean false".into(),
        b'"' => match as_text(v) {
            Some(s) => format!("the string {}", quote_bounded(&s)),
            None => "a string".into(),
        },
        b'[' => "an array".into(),
        b'{' => "an object".into(),
        _ => match serde_json::from_str::<serde_json::Number>(v.get()) {
            Ok(n) => format!("the number {n}"),
            Err(_) => "a number".into(),
        },
    }
}

fn missing_or(v: Option<&RawValue>) -> String {
    v.map(describe).unwrap_or_else(|| "missing".into())
}

/// The envelope's three members, read in one pass over the body with the members of `request`
/// ([`RequestFields`]; `Some(None)` when `request` is not an object); anything else is skipped.
struct Envelope<'a> {
    api_version: Option<&'a RawValue>,
    kind: Option<&'a RawValue>,
    request: Option<Option<RequestFields<'a>>>,
}

/// `None`: the body is JSON but not an object.
struct EnvelopeSeed;

impl<'de> DeserializeSeed<'de> for EnvelopeSeed {
    type Value = Option<Envelope<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// The rest of a visitor whose value is `Option<_>`: anything but an object is `None` (and a
/// sequence is skipped without being kept).
macro_rules! non_objects_are_none {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

impl<'de> Visitor<'de> for EnvelopeSeed {
    type Value = Option<Envelope<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionReview")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut env = Envelope {
            api_version: None,
            kind: None,
            request: None,
        };
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key {
                "apiVersion" => env.api_version = Some(map.next_value::<&'de RawValue>()?),
                "kind" => env.kind = Some(map.next_value::<&'de RawValue>()?),
                "request" => env.request = Some(map.next_value_seed(RequestSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(env))
    }
    non_objects_are_none!();
}

/// Decodes an AdmissionReview body. The objects of the request borrow from `body`.
pub fn decode(body: &[u8]) -> Result<Decoded<'_>, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let envelope = EnvelopeSeed
        .deserialize(&mut de)
        .and_then(|env| de.end().map(|()| env))
        .map_err(|e| Rejection::NotJson(e.to_string()))?;
    let Some(envelope) = envelope else {
        return Err(Rejection::NotAnObject);
    };
    let is = |v: Option<&RawValue>, want: &str| v.and_then(as_text).is_some_and(|s| *s == *want);
    if !is(envelope.api_version, API_VERSION) {
        return Err(Rejection::ApiVersion(missing_or(envelope.api_version)));
    }
    if !is(envelope.kind, KIND) {
        return Err(Rejection::Kind(missing_or(envelope.kind)));
    }
    let Some(Some(fields)) = envelope.request else {
        return Err(Rejection::NoRequest);
    };
    let uid = match fields.uid.and_then(as_text) {
        Some(uid) if uid.len() > MAX_UID_BYTES => return Err(Rejection::UidTooLong(uid.len())),
        Some(uid) => uid.0.into_owned(),
        None => return Err(Rejection::NoUid),
    };
    match read_request(&uid, &fields) {
        Ok(req) => Ok(Decoded::Request(Box::new(req))),
        Err(message) => Ok(Decoded::Unreadable { uid, message }),
    }
}

/// [`decode`] for an already parsed body (the objects are copied).
pub fn decode_value(value: Value) -> Result<Decoded<'static>, Rejection> {
    let body = serde_json::to_vec(&value).map_err(|e| Rejection::NotJson(e.to_string()))?;
    decode(&body).map(Decoded::into_owned)
}

/// The members of `request` Portico reads, raw.
#[derive(Default)]
struct RequestFields<'a> {
    uid: Option<&'a RawValue>,
    kind: Option<&'a RawValue>,
    sub_resource: Option<&'a RawValue>,
    name: Option<&'a RawValue>,
    namespace: Option<&'a RawValue>,
    operation: Option<&'a RawValue>,
    object: Option<&'a RawValue>,
    old_object: Option<&'a RawValue>,
    dry_run: Option<&'a RawValue>,
}

/// Reads the members of `request` as the envelope is parsed (`None`: not an object).
struct RequestSeed;

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = Option<RequestFields<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = Option<RequestFields<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionRequest")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = RequestFields::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let slot = match &*key {
                "uid" => &mut f.uid,
                "kind" => &mut f.kind,
                "subResource" => &mut f.sub_resource,
                "name" => &mut f.name,
                "namespace" => &mut f.namespace,
                "operation" => &mut f.operation,
                "object" => &mut f.object,
                "oldObject" => &mut f.old_object,
                "dryRun" => &mut f.dry_run,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(Some(f))
    }
    non_objects_are_none!();
}

/// An optional string field: absent or `null` is `None`; at most [`MAX_FIELD_BYTES`].
fn opt_string(v: Option<&RawValue>, path: &str, key: &str) -> Result<Option<String>, String> {
    let Some(v) = v else { return Ok(None) };
    match first_byte(v) {
        b'n' => Ok(None),
        b'"' => match as_text(v) {
            Some(s) if s.len() > MAX_FIELD_BYTES => Err(format!(
                "{path}.{key}: must be no more than {MAX_FIELD_BYTES} bytes, got {}",
                s.len()
            )),
            Some(s) => Ok(Some(s.0.into_owned())),
            None => Err(format!("{path}.{key}: expected a string, got {}", describe(v))),
        },
        _ => Err(format!("{path}.{key}: expected a string, got {}", describe(v))),
    }
}

fn read_request<'a>(uid: &str, f: &RequestFields<'a>) -> Result<AdmissionRequest<'a>, String> {
    let kind = match f.kind.filter(|k| first_byte(k) == b'{') {
        Some(gvk) => {
            let [group, version, kind] = members(gvk, ["group", "version", "kind"]).unwrap_or_default();
            let kind = opt_string(kind, "request.kind", "kind")?
                .filter(|k| !k.is_empty())
                .ok_or_else(|| "request.kind.kind: required value".to_owned())?;
            GroupVersionKind {
                group: opt_string(group, "request.kind", "group")?.unwrap_or_default(),
                version: opt_string(version, "request.kind", "version")?.unwrap_or_default(),
                kind,
            }
        }
        None => {
            return Err(format!(
                "request.kind: expected an object {{group, version, kind}}, got {}",
                missing_or(f.kind)
            ));
        }
    };
    let operation = match opt_string(f.operation, "request", "operation")?.as_deref() {
        Some("CREATE") => Operation::Create,
        Some("UPDATE") => Operation::Update,
        Some("DELETE") => Operation::Delete,
        Some("CONNECT") => Operation::Connect,
        Some(other) => {
            return Err(format!(
                "request.operation: unsupported value {}: supported values: \"CONNECT\", \"CREATE\", \
                 \"DELETE\", \"UPDATE\"",
                quote_bounded(other)
            ));
        }
        None => return Err("request.operation: required value".to_owned()),
    };
    let sub_resource = opt_string(f.sub_resource, "request", "subResource")?.filter(|s| !s.is_empty());
    let name = opt_string(f.name, "request", "name")?.unwrap_or_default();
    let namespace = opt_string(f.namespace, "request", "namespace")?.filter(|s| !s.is_empty());
    let object = take_object(f.object, "object")?;
    let old_object = take_object(f.old_object, "oldObject")?;
    let dry_run = match f.dry_run {
        None => false,
        Some(v) => match first_byte(v) {
            b'n' => false,
            b't' => true,
            b'f' => false,
            _ => {
                return Err(format!("request.dryRun: expected a boolean, got {}", describe(v)));
            }
        },
    };
    Ok(AdmissionRequest {
        uid: uid.to_owned(),
        kind,
        sub_resource,
        name,
        namespace,
        operation,
        object,
        old_object,
        dry_run,
    })
}

/// `object`/`oldObject`: absent or `null` is `None`, an object is kept raw, anything else is an
/// error (no Kubernetes object is a JSON scalar or array).
fn take_object<'a>(v: Option<&'a RawValue>, key: &str) -> Result<Option<RawObject<'a>>, String> {
    let Some(v) = v else { return Ok(None) };
    match first_byte(v) {
        b'n' => Ok(None),
        b'{' => Ok(Some(RawObject::borrowed(v))),
        _ => Err(format!("request.{key}: expected an object, got {}", describe(v))),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Status>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<String, String>,
}

/// Encodes the answer to the review `uid`. The warnings are sanitized; `status` is dropped when
/// the verdict allows (the apiserver ignores it); the patch is sent only if `allow_patch` (the
/// mutating endpoint) and the verdict allows.
pub fn encode(uid: &str, verdict: &Verdict, allow_patch: bool) -> Vec<u8> {
    let warnings = crate::status::sanitize_warnings(verdict.warnings.clone());
    let patch = match (&verdict.patch, allow_patch && verdict.allowed) {
        (Some(p), true) => Some(base64(&serde_json::to_vec(p).unwrap_or_default())),
        _ => None,
    };
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid,
            allowed: verdict.allowed,
            status: if verdict.allowed {
                None
            } else {
                verdict.status.as_ref()
            },
            warnings: &warnings,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &verdict.audit_annotations,
        },
    };
    // Serializing these plain structs cannot fail (string keys, no custom serializers).
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Standard base64 with padding (Go's `[]byte` JSON encoding).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "request": request})).unwrap()
    }

    fn request(uid: &str) -> Value {
        json!({
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            "someFutureField": {"x": 1},
        })
    }

    #[test]
    fn decodes_a_full_request_and_ignores_unknown_fields() {
        let body = review(request("u-1"));
        let Decoded::Request(r) = decode(&body).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.uid, "u-1");
        assert_eq!(r.kind.kind, "Pod");
        assert_eq!(r.operation_name(), "CREATE");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert!(r.old_object.is_none() && !r.dry_run && r.sub_resource.is_none());
        assert_eq!(r.object_name(), "p");
    }

    #[test]
    fn bodies_that_are_not_reviews_are_rejected() {
        assert!(matches!(decode(b"{not json"), Err(Rejection::NotJson(_))));
        assert_eq!(decode(b"[1]"), Err(Rejection::NotAnObject));
        assert_eq!(
            decode(br#"{"kind":"AdmissionReview","request":{}}"#),
            Err(Rejection::ApiVersion("missing".into()))
        );
        assert_eq!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .unwrap_err()
                .to_string(),
            "request body is not an admission.k8s.io/v1 AdmissionReview: apiVersion is the string \
             \"admission.k8s.io/v1beta1\""
        );
        assert_eq!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#),
            Err(Rejection::Kind("the string \"Pod\"".into()))
        );
        assert_eq!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(Rejection::NoRequest)
        );
        assert_eq!(decode(&review(json!({"uid": 7}))), Err(Rejection::NoUid));
        assert_eq!(
            decode(&review(json!({"uid": "u".repeat(300)}))),
            Err(Rejection::UidTooLong(300))
        );
        // Duplicate keys: the last one counts, as with any JSON object decoder.
        let dup = br#"{"apiVersion":"x","apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1,"uid":"u"}}"#;
        assert!(matches!(decode(dup), Ok(Decoded::Unreadable { .. })));
        assert!(matches!(decode(b"{} x"), Err(Rejection::NotJson(_))));
    }

    #[test]
    fn objects_stay_slices_of_the_body() {
        let body = review(request("u-9"));
        let Decoded::Request(r) = decode(&body).unwrap() else {
            panic!("not a request")
        };
        let object = r.object.as_ref().unwrap();
        let start = object.json().as_ptr() as usize - body.as_ptr() as usize;
        assert_eq!(
            &body[start..start + object.json().len()],
            object.json().as_bytes()
        );
        assert_eq!(object.str_member("kind").as_deref(), Some("Pod"));
        assert!(!object.terminating());
        let owned = r.clone().into_owned();
        assert_eq!(*r, owned);
    }

    #[test]
    fn long_strings_are_refused_or_cut() {
        let mut r = request("u-4");
        r["name"] = json!("n".repeat(MAX_FIELD_BYTES + 1));
        match decode(&review(r)).unwrap() {
            Decoded::Unreadable { message, .. } => {
                assert_eq!(message, "request.name: must be no more than 1024 bytes, got 1025")
            }
            other => panic!("{other:?}"),
        }
        let mut r = request("u-5");
        r["operation"] = json!("X".repeat(10_000));
        match decode(&review(r)).unwrap() {
            Decoded::Unreadable { message, .. } => assert!(message.len() < 600, "{message}"),
            other => panic!("{other:?}"),
        }
        let mut r = request("u-6");
        r["object"]["metadata"]["name"] = json!("o".repeat(10_000));
        let body = review(r);
        let Decoded::Request(req) = decode(&body).unwrap() else {
            panic!()
        };
        assert_eq!(req.object_name().len(), crate::status::MAX_NAME_BYTES);
    }

    #[test]
    fn unreadable_requests_name_the_field() {
        let cases = [
            (
                "kind",
                json!("Pod"),
                "request.kind: expected an object {group, version, kind}, got the string \"Pod\"",
            ),
            (
                "operation",
                json!("PATCH"),
                "request.operation: unsupported value \"PATCH\"",
            ),
            ("operation", json!(null), "request.operation: required value"),
            (
                "object",
                json!([1]),
                "request.object: expected an object, got an array",
            ),
            (
                "dryRun",
                json!("yes"),
                "request.dryRun: expected a boolean, got the string \"yes\"",
            ),
            (
                "namespace",
                json!(1),
                "request.namespace: expected a string, got the number 1",
            ),
        ];
        for (key, value, want) in cases {
            let mut r = request("u-2");
            r[key] = value;
            match decode(&review(r)).unwrap() {
                Decoded::Unreadable { uid, message } => {
                    assert_eq!(uid, "u-2");
                    assert!(message.starts_with(want), "{key}: {message}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        let mut r = request("u-3");
        r["kind"] = json!({"group": "", "version": "v1"});
        assert!(matches!(decode(&review(r)).unwrap(), Decoded::Unreadable { .. }));
    }

    #[test]
    fn encoding_echoes_the_uid_and_omits_what_does_not_apply() {
        let out: Value = serde_json::from_slice(&encode("abc", &Verdict::allow(), false)).unwrap();
        assert_eq!(
            out,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "abc", "allowed": true}})
        );
        let v = Verdict::deny(crate::status::bad_request("nope")).with_warnings(["w\n".to_owned()]);
        let out: Value = serde_json::from_slice(&encode("abc", &v, false)).unwrap();
        assert_eq!(out["response"]["status"]["code"], 400);
        assert_eq!(out["response"]["warnings"], json!(["w\\n"]));
        // A patch leaves only through the mutating endpoint, and only with an admission.
        let p = Verdict::allow().with_patch(json!([{"op": "add", "path": "/a", "value": 1}]));
        let out: Value = serde_json::from_slice(&encode("abc", &p, false)).unwrap();
        assert!(out["response"].get("patch").is_none());
        let out: Value = serde_json::from_slice(&encode("abc", &p, true)).unwrap();
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(
            out["response"]["patch"],
            base64(br#"[{"op":"add","path":"/a","value":1}]"#)
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn verdict_results() {
        assert_eq!(Verdict::allow().result(), "allowed");
        assert_eq!(Verdict::deny(crate::status::bad_request("x")).result(), "error");
        assert_eq!(Verdict::deny(crate::status::internal("x")).result(), "error");
        assert_eq!(
            Verdict::deny(crate::status::invalid("", "Pod", "p", &[])).result(),
            "denied"
        );
        assert_eq!(Verdict::default().result(), "denied");
    }
}
