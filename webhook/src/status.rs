//! The `status` of a refusal, shaped like the apiserver's own errors, and warning hygiene.
//!
//! A refusal by a port rule is what `apierrors.NewInvalid` would have produced had upstream known
//! the rule: HTTP 422, reason `Invalid`, `details{group, kind, name, causes}` with one cause per
//! field error, and the message `<Kind>[.<group>] "<name>" is invalid: <errors>`. kubectl prints such
//! a status as `The <Kind> "<name>" is invalid: ...` with one line per cause; without the details it
//! would print only `The request is invalid` (kubernetes#111108), so every 422 here carries them.
//!
//! Unlike upstream, whose `ToAggregate` lists every error, a refusal is bounded: at most
//! [`MAX_CAUSES`] causes, the message listing the same errors and ending with `and N more` when
//! there were others, and both kept under a few tens of KiB (a cause too long for what is left
//! ends the list early; a single text longer than [`MAX_TEXT_BYTES`] is cut). With a handful of
//! errors the answer is byte for byte upstream's.

use kube::core::response::{Status, StatusCause, StatusDetails, StatusSummary};
use portico_allocators::field::{FieldError, go_quote};

pub use crate::validation::findings::MAX_CAUSES;

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

/// Most bytes of error text in a refusal's message (its errors, before JSON escaping).
pub const MESSAGE_BUDGET: usize = 16 << 10;
/// Most bytes of error text (field and message) in a refusal's causes.
pub const CAUSES_BUDGET: usize = 24 << 10;
/// Longest single text (a cause's message or field, one error in the message, a status message)
/// in bytes; a longer one is cut and ends with `...`.
pub const MAX_TEXT_BYTES: usize = 4 << 10;
/// Longest object name quoted in a message, in bytes (a DNS subdomain's limit; no valid name is
/// longer).
pub const MAX_NAME_BYTES: usize = 253;

/// `s` cut to at most `max` bytes (at a character boundary), with `...` when cut.
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...", &s[..end]))
}

/// `go_quote` of at most the first 256 bytes of `s` (then `...`): for values echoed in messages
/// about malformed reviews.
pub fn quote_bounded(s: &str) -> String {
    const MAX: usize = 256;
    if s.len() <= MAX {
        return go_quote(s);
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", go_quote(&s[..end]))
}

/// HTTP 422 `Invalid` for the object `name` of kind `group`/`kind`, one cause per error, in order.
///
/// Identical messages are collapsed in `message` but every error keeps its cause, as upstream does.
/// At most [`MAX_CAUSES`] errors are shown (see the module docs).
pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Status {
    invalid_with_more(group, kind, name, errs, 0)
}

/// [`invalid`] for the first errors of a longer list: `more` errors were found after `errs` and
/// are only counted (`... and N more`).
pub fn invalid_with_more(group: &str, kind: &str, name: &str, errs: &[FieldError], more: usize) -> Status {
    let name = truncate(name, MAX_NAME_BYTES);
    let mut causes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut msgs: Vec<String> = Vec::new();
    let (mut cause_bytes, mut message_bytes) = (0, 0);
    for e in errs.iter().take(MAX_CAUSES) {
        let body = truncate(&e.body(), MAX_TEXT_BYTES).into_owned();
        let field = truncate(&e.field, MAX_TEXT_BYTES).into_owned();
        let rendered = truncate(&format!("{}: {}", e.field, body), MAX_TEXT_BYTES).into_owned();
        let cause_cost = field.len() + body.len();
        let new_message = !seen.contains(&rendered);
        let message_cost = if new_message { rendered.len() + 2 } else { 0 };
        if !causes.is_empty()
            && (cause_bytes + cause_cost > CAUSES_BUDGET || message_bytes + message_cost > MESSAGE_BUDGET)
        {
            break;
        }
        cause_bytes += cause_cost;
        message_bytes += message_cost;
        if new_message {
            seen.insert(rendered.clone());
            msgs.push(rendered);
        }
        causes.push(StatusCause {
            reason: e.kind.reason().to_owned(),
            message: body,
            field,
        });
    }
    let more = more + (errs.len() - causes.len());
    let agg = match (msgs.len(), more) {
        (1, 0) => msgs[0].clone(),
        (_, 0) => format!("[{}]", msgs.join(", ")),
        (_, more) => format!("[{}] and {more} more", msgs.join(", ")),
    };
    Status {
        status: Some(StatusSummary::Failure),
        code: 422,
        message: format!(
            "{} {} is invalid: {agg}",
            qualified_kind(group, kind),
            go_quote(&name)
        ),
        metadata: None,
        reason: REASON_INVALID.to_owned(),
        details: Some(StatusDetails {
            name: name.into_owned(),
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
    let message = match truncate(&message, MAX_TEXT_BYTES) {
        std::borrow::Cow::Borrowed(_) => message,
        std::borrow::Cow::Owned(cut) => cut,
    };
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
    fn refusals_are_capped_and_bounded() {
        use portico_allocators::field::invalid_message;
        // A few errors: exactly upstream's message (identical ones collapsed), one cause each.
        let few = vec![
            FieldError::required("spec.ports[0].name", ""),
            FieldError::required("spec.ports[0].name", ""),
            FieldError::invalid(
                "spec.ports[1].port",
                BadValue::Int(0),
                "must be between 1 and 65535, inclusive",
            ),
        ];
        let s = invalid("", "Service", "web", &few);
        assert_eq!(s.message, invalid_message("Service", "web", &few));
        assert_eq!(s.details.as_ref().unwrap().causes.len(), 3);
        // Many: the first 100, then how many more (the ones counted only, too).
        let many: Vec<FieldError> = (0..250)
            .map(|i| FieldError::required(format!("spec.ports[{i}].name"), ""))
            .collect();
        let s = invalid_with_more("", "Service", "web", &many, 1000);
        assert_eq!(s.details.as_ref().unwrap().causes.len(), MAX_CAUSES);
        let first: Vec<String> = many[..100].iter().map(ToString::to_string).collect();
        assert_eq!(
            s.message,
            format!("Service \"web\" is invalid: [{}] and 1150 more", first.join(", "))
        );
        // Long errors: fewer causes, within the budgets; a long name is cut.
        let long: Vec<FieldError> = (0..100)
            .map(|i| {
                FieldError::invalid(
                    format!("spec.ports[{i}].name"),
                    BadValue::Str("x".repeat(1000)),
                    "y".repeat(200),
                )
            })
            .collect();
        let s = invalid("", "Service", &"n".repeat(1000), &long);
        let causes = &s.details.as_ref().unwrap().causes;
        assert!(causes.len() < 30, "{}", causes.len());
        assert!(s.message.len() < MESSAGE_BUDGET + 1024, "{}", s.message.len());
        assert!(s.message.ends_with(&format!("] and {} more", 100 - causes.len())));
        assert_eq!(s.details.as_ref().unwrap().name.len(), MAX_NAME_BYTES);
        // One huge error is cut, not dropped.
        let huge = [FieldError::invalid(
            "spec.x",
            BadValue::Raw("z".repeat(1 << 20)),
            "bad",
        )];
        let s = invalid("", "Service", "web", &huge);
        assert_eq!(s.details.as_ref().unwrap().causes.len(), 1);
        assert!(s.message.len() < 2 * MAX_TEXT_BYTES);
        assert!(bad_request("q".repeat(1 << 20)).message.len() <= MAX_TEXT_BYTES);
        assert_eq!(quote_bounded("ab"), "\"ab\"");
        assert!(quote_bounded(&"é".repeat(1000)).ends_with("\"..."));
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
