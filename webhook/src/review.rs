//! The AdmissionReview envelope (`admission.k8s.io/v1`): decoding requests, encoding answers.
//!
//! Decoding is lenient where the apiserver may grow (unknown fields are ignored, `object` stays raw
//! JSON and only the parts a rule needs are decoded later) and strict where an answer would be
//! meaningless: a body that is not an `admission.k8s.io/v1` AdmissionReview with a `request.uid` is
//! refused with HTTP 400 and a plain-text reason (the apiserver counts it as a failed call, which
//! is what it is). Every other review gets HTTP 200 and an AdmissionReview whose `response.uid`
//! echoes the request's, even when a field of the request has the wrong type: that is answered
//! `allowed: false`, code 400, with the path of the field.

use std::collections::BTreeMap;

use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use kube::core::response::Status;
use serde::Serialize;
use serde_json::{Map, Value};

/// `apiVersion` of the only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of the envelope.
pub const KIND: &str = "AdmissionReview";

/// What Portico reads of `AdmissionReview.request`. Everything else (userInfo, options,
/// requestKind, ...) is ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionRequest {
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
    pub object: Option<Value>,
    /// `request.oldObject`, raw; `None` when absent or `null` (CREATE, CONNECT).
    pub old_object: Option<Value>,
    /// `request.dryRun`: nothing may be persisted (an allocation in particular) for this review.
    pub dry_run: bool,
}

impl AdmissionRequest {
    /// The operation's name as the apiserver spells it.
    pub fn operation_name(&self) -> &'static str {
        operation_name(&self.operation)
    }

    /// Name of the object for messages: `metadata.name` of `object` (or `oldObject`), else
    /// `request.name`, else `metadata.generateName`, else empty.
    pub fn object_name(&self) -> String {
        let meta = |o: &Option<Value>, key: &str| {
            o.as_ref()
                .and_then(|o| o.get("metadata"))
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        meta(&self.object, "name")
            .or_else(|| meta(&self.old_object, "name"))
            .or_else(|| (!self.name.is_empty()).then(|| self.name.clone()))
            .or_else(|| meta(&self.object, "generateName"))
            .unwrap_or_default()
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
}

/// A decoded review.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A request the handlers can judge.
    Request(Box<AdmissionRequest>),
    /// A well-formed review whose request has a field of the wrong type or value: answered
    /// `allowed: false`, 400 `BadRequest`, with this message.
    Unreadable {
        /// `request.uid`.
        uid: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", portico_allocators::field::go_quote(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn missing_or(v: Option<&Value>) -> String {
    v.map(describe).unwrap_or_else(|| "missing".into())
}

/// Decodes an AdmissionReview body.
pub fn decode(body: &[u8]) -> Result<Decoded, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejection::NotJson(e.to_string()))?;
    decode_value(value)
}

/// [`decode`] for an already parsed body.
pub fn decode_value(value: Value) -> Result<Decoded, Rejection> {
    let Value::Object(mut envelope) = value else {
        return Err(Rejection::NotAnObject);
    };
    match envelope.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        other => return Err(Rejection::ApiVersion(missing_or(other))),
    }
    match envelope.get("kind") {
        Some(Value::String(k)) if k == KIND => {}
        other => return Err(Rejection::Kind(missing_or(other))),
    }
    let Some(Value::Object(mut request)) = envelope.remove("request") else {
        return Err(Rejection::NoRequest);
    };
    let uid = match request.remove("uid") {
        Some(Value::String(uid)) => uid,
        _ => return Err(Rejection::NoUid),
    };
    match read_request(&uid, &mut request) {
        Ok(req) => Ok(Decoded::Request(Box::new(req))),
        Err(message) => Ok(Decoded::Unreadable { uid, message }),
    }
}

/// An optional string field: absent or `null` is `None`.
fn opt_string(map: &mut Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, String> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{path}.{key}: expected a string, got {}",
            describe(&other)
        )),
    }
}

fn read_request(uid: &str, request: &mut Map<String, Value>) -> Result<AdmissionRequest, String> {
    let kind = match request.remove("kind") {
        Some(Value::Object(mut gvk)) => {
            let kind = opt_string(&mut gvk, "kind", "request.kind")?
                .filter(|k| !k.is_empty())
                .ok_or_else(|| "request.kind.kind: required value".to_owned())?;
            GroupVersionKind {
                group: opt_string(&mut gvk, "group", "request.kind")?.unwrap_or_default(),
                version: opt_string(&mut gvk, "version", "request.kind")?.unwrap_or_default(),
                kind,
            }
        }
        other => {
            return Err(format!(
                "request.kind: expected an object {{group, version, kind}}, got {}",
                missing_or(other.as_ref())
            ));
        }
    };
    let operation = match opt_string(request, "operation", "request")?.as_deref() {
        Some("CREATE") => Operation::Create,
        Some("UPDATE") => Operation::Update,
        Some("DELETE") => Operation::Delete,
        Some("CONNECT") => Operation::Connect,
        Some(other) => {
            return Err(format!(
                "request.operation: unsupported value {}: supported values: \"CONNECT\", \"CREATE\", \
                 \"DELETE\", \"UPDATE\"",
                portico_allocators::field::go_quote(other)
            ));
        }
        None => return Err("request.operation: required value".to_owned()),
    };
    let sub_resource = opt_string(request, "subResource", "request")?.filter(|s| !s.is_empty());
    let name = opt_string(request, "name", "request")?.unwrap_or_default();
    let namespace = opt_string(request, "namespace", "request")?.filter(|s| !s.is_empty());
    let object = take_object(request, "object")?;
    let old_object = take_object(request, "oldObject")?;
    let dry_run = match request.remove("dryRun") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(format!(
                "request.dryRun: expected a boolean, got {}",
                describe(&other)
            ));
        }
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
fn take_object(request: &mut Map<String, Value>, key: &str) -> Result<Option<Value>, String> {
    match request.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(other) => Err(format!(
            "request.{key}: expected an object, got {}",
            describe(&other)
        )),
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
        let Decoded::Request(r) = decode(&review(request("u-1"))).unwrap() else {
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
