//! The `status` of a refusal, shaped like the apiserver's own errors, and warning hygiene.
//!
//! A refusal by a port rule is what `apierrors.NewInvalid` would have produced had upstream known
//! the rule: HTTP 422, reason `Invalid`, `details{group, kind, name, causes}` with one cause per
//! field error, and the message `<Kind>[.<group>] "<name>" is invalid: <errors>`. kubectl prints such
//! a status as `The <Kind> "<name>" is invalid: ...` with one line per cause; without the details it
//! would print only `The request is invalid` (kubernetes#111108), so every 422 here carries them.

use kube::core::response::{Status, StatusCause, StatusDetails, StatusSummary};
use portico_allocators::field::{FieldError, go_quote, invalid_message};

/// `reason` of a refusal by a field rule.
pub const REASON_INVALID: &str = "Invalid";
/// `reason` of a review Portico cannot read.
pub const REASON_BAD_REQUEST: &str = "BadRequest";
/// `reason` of a failure on Portico's side.
pub const REASON_INTERNAL: &str = "InternalError";

/// At most this many warnings are returned per review (the apiserver truncates every warning once
/// they add up to more than 4 KiB, so a flood would ruin the useful ones).
pub const MAX_WARNINGS: usize = 16;
/// A warning longer than this many characters is cut (with `...`). kubectl prints each on a line.
pub const MAX_WARNING_CHARS: usize = 512;

/// `Kind` for the core group, `Kind.group` otherwise: how upstream names a kind in messages
/// (`schema.GroupKind.String()`), e.g. `Deployment.apps "web" is invalid: ...`.
pub fn qualified_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    }
}

/// HTTP 422 `Invalid` for the object `name` of kind `group`/`kind`, one cause per error, in order.
///
/// Identical messages are collapsed in `message` but every error keeps its cause, as upstream does.
pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Status {
    let causes = errs
        .iter()
        .map(|e| StatusCause {
            reason: e.kind.reason().to_owned(),
            message: e.body(),
            field: e.field.clone(),
        })
        .collect();
    Status {
        status: Some(StatusSummary::Failure),
        code: 422,
        message: invalid_message(&qualified_kind(group, kind), name, errs),
        metadata: None,
        reason: REASON_INVALID.to_owned(),
        details: Some(StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            uid: String::new(),
            causes,
            retry_after_seconds: 0,
        }),
    }
}

/// HTTP 400 `BadRequest`: the review is well-formed but its content cannot be read.
pub fn bad_request(message: impl Into<String>) -> Status {
    failure(400, REASON_BAD_REQUEST, message.into())
}

/// HTTP 500 `InternalError`: Portico could not decide (e.g. a handler ran out of time).
pub fn internal(message: impl AsRef<str>) -> Status {
    failure(
        500,
        REASON_INTERNAL,
        format!("Internal error occurred: {}", message.as_ref()),
    )
}

fn failure(code: u16, reason: &str, message: String) -> Status {
    Status {
        status: Some(StatusSummary::Failure),
        code,
        message,
        metadata: None,
        reason: reason.to_owned(),
        details: None,
    }
}

/// Makes warnings safe to return: control characters escaped (the apiserver silently drops a
/// warning that contains one), each cut to [`MAX_WARNING_CHARS`], duplicates and empty ones removed,
/// at most [`MAX_WARNINGS`] kept, order preserved.
pub fn sanitize_warnings(warnings: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for w in warnings {
        let w = sanitize_warning(&w);
        if w.is_empty() || !seen.insert(w.clone()) {
            continue;
        }
        out.push(w);
        if out.len() == MAX_WARNINGS {
            break;
        }
    }
    out
}

fn sanitize_warning(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    for c in w.chars() {
        if c.is_control() {
            // `go_quote` renders one character as `"\n"`: keep the escape, drop the quotes.
            let q = go_quote(c.encode_utf8(&mut [0; 4]));
            out.push_str(&q[1..q.len() - 1]);
        } else {
            out.push(c);
        }
    }
    if out.chars().count() > MAX_WARNING_CHARS {
        let mut cut: String = out.chars().take(MAX_WARNING_CHARS - 3).collect();
        cut.push_str("...");
        out = cut;
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use portico_allocators::field::BadValue;

    use super::*;

    #[test]
    fn invalid_status_mirrors_upstream() {
        let errs = vec![
            FieldError::invalid("spec.ports[0].name", BadValue::Str("HTTP".into()), "bad"),
            FieldError::required("spec.ports[1].name", ""),
        ];
        let s = invalid("", "Service", "web", &errs);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "status": "Failure",
                "code": 422,
                "reason": "Invalid",
                "message": "Service \"web\" is invalid: [spec.ports[0].name: Invalid value: \"HTTP\": bad, \
                            spec.ports[1].name: Required value]",
                "details": {"name": "web", "kind": "Service", "causes": [
                    {"reason": "FieldValueInvalid", "message": "Invalid value: \"HTTP\": bad",
                     "field": "spec.ports[0].name"},
                    {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.ports[1].name"},
                ]}
            })
        );
    }

    #[test]
    fn workload_kinds_are_qualified_by_group() {
        let errs = vec![FieldError::required(
            "spec.template.spec.containers[0].ports[0].containerPort",
            "",
        )];
        let s = invalid("apps", "Deployment", "web", &errs);
        assert!(
            s.message
                .starts_with("Deployment.apps \"web\" is invalid: spec.template"),
            "{}",
            s.message
        );
        let d = s.details.unwrap();
        assert_eq!((d.group.as_str(), d.kind.as_str()), ("apps", "Deployment"));
    }

    #[test]
    fn other_statuses() {
        let b = bad_request("request.object: expected an object");
        assert_eq!((b.code, b.reason.as_str()), (400, "BadRequest"));
        let i = internal("timed out");
        assert_eq!(
            (i.code, i.message.as_str()),
            (500, "Internal error occurred: timed out")
        );
    }

    #[test]
    fn warnings_are_made_safe() {
        let long = "x".repeat(2000);
        let got = sanitize_warnings(vec![
            "a\nb".into(),
            "a\nb".into(),
            "".into(),
            "tab\there".into(),
            long,
        ]);
        assert_eq!(got[0], "a\\nb");
        assert_eq!(got[1], "tab\\there");
        assert_eq!(got[2].chars().count(), MAX_WARNING_CHARS);
        assert!(got[2].ends_with("..."));
        assert_eq!(got.len(), 3);
        let many: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        assert_eq!(sanitize_warnings(many).len(), MAX_WARNINGS);
    }
}
