//! The Kubernetes field-error vocabulary (`k8s.io/apimachinery/pkg/util/validation/field`).
//!
//! The allocators and the webhook both refuse requests the way the apiserver does: a list of
//! field errors aggregated into one `422 Invalid` status. Keeping the type here, in the one
//! crate without I/O that both depend on, lets the allocator errors and the webhook's port
//! rules render byte-for-byte like upstream (v1.24 formatting: `%q` strings, bare integers).

use std::fmt;

/// Upstream's `field.ErrorType`: the `reason` of a `StatusCause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// `FieldValueRequired`
    Required,
    /// `FieldValueInvalid`
    Invalid,
    /// `FieldValueDuplicate`
    Duplicate,
    /// `FieldValueNotSupported`
    NotSupported,
    /// `FieldValueForbidden`
    Forbidden,
    /// `FieldValueNotFound`
    NotFound,
    /// `FieldValueTooLong`
    TooLong,
    /// `InternalError`
    Internal,
}

impl ErrorType {
    /// The `StatusCause.reason` string.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::NotFound => "FieldValueNotFound",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::Internal => "InternalError",
        }
    }
}

/// A bad value as upstream prints it: Go `%q` for strings, `%v` for integers, and a pre-rendered
/// form for anything else (e.g. `["10.0.0.5"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadValue {
    /// Rendered with Go `%q`.
    Str(String),
    /// Rendered bare.
    Int(i64),
    /// Rendered verbatim (already in upstream's form).
    Raw(String),
}

impl BadValue {
    /// A list of strings as upstream reports `spec.clusterIPs` since field errors render
    /// composite values with Go's `json.Marshal` (1.33+ prints `["10.0.0.5"]`, where 1.24 printed
    /// `[]string{"10.0.0.5"}`; checked against kube-apiserver 1.37 by the integration suite).
    pub fn string_list<S: AsRef<str>>(items: &[S]) -> Self {
        let inner: Vec<String> = items.iter().map(|s| go_json_string(s.as_ref())).collect();
        BadValue::Raw(format!("[{}]", inner.join(",")))
    }
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadValue::Str(s) => f.write_str(&go_quote(s)),
            BadValue::Int(i) => write!(f, "{i}"),
            BadValue::Raw(s) => f.write_str(s),
        }
    }
}

/// One field error: `<field>: <body>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Upstream's error type (the cause's `reason`).
    pub kind: ErrorType,
    /// Field path, e.g. `spec.ports[0].nodePort`.
    pub field: String,
    /// The offending value, when the error type shows one.
    pub value: Option<BadValue>,
    /// Free-text detail after the value.
    pub detail: String,
}

impl FieldError {
    /// `Invalid value: <v>: <detail>`
    pub fn invalid(field: impl Into<String>, value: BadValue, detail: impl Into<String>) -> Self {
        FieldError {
            kind: ErrorType::Invalid,
            field: field.into(),
            value: Some(value),
            detail: detail.into(),
        }
    }

    /// `Required value[: <detail>]`
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: ErrorType::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    /// `Duplicate value: <v>`
    pub fn duplicate(field: impl Into<String>, value: BadValue) -> Self {
        FieldError {
            kind: ErrorType::Duplicate,
            field: field.into(),
            value: Some(value),
            detail: String::new(),
        }
    }

    /// `Not found: <v>`
    pub fn not_found(field: impl Into<String>, value: BadValue) -> Self {
        FieldError {
            kind: ErrorType::NotFound,
            field: field.into(),
            value: Some(value),
            detail: String::new(),
        }
    }

    /// The same error with a detail appended (upstream shows details for every type).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// `Forbidden: <detail>`
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: ErrorType::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    /// `Unsupported value: <v>: supported values: "a", "b"` (sorted, quoted).
    pub fn not_supported(field: impl Into<String>, value: BadValue, supported: &[&str]) -> Self {
        let mut s: Vec<&str> = supported.to_vec();
        s.sort_unstable();
        let list: Vec<String> = s.iter().map(|v| go_quote(v)).collect();
        FieldError {
            kind: ErrorType::NotSupported,
            field: field.into(),
            value: Some(value),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }

    /// The part after `<field>: `, which is also the `StatusCause.message`: the type's words,
    /// the value for the types that show one, then `: <detail>` whenever there is a detail.
    pub fn body(&self) -> String {
        let value = || {
            self.value
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "null".to_owned())
        };
        let head = match self.kind {
            ErrorType::Required => "Required value".to_owned(),
            ErrorType::Forbidden => "Forbidden".to_owned(),
            ErrorType::TooLong => "Too long".to_owned(),
            ErrorType::Internal => "Internal error".to_owned(),
            ErrorType::Invalid => format!("Invalid value: {}", value()),
            ErrorType::Duplicate => format!("Duplicate value: {}", value()),
            ErrorType::NotSupported => format!("Unsupported value: {}", value()),
            ErrorType::NotFound => format!("Not found: {}", value()),
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

impl std::error::Error for FieldError {}

/// `<Kind> "<name>" is invalid: <agg>`, as `apierrors.NewInvalid` builds the status message:
/// one error bare, several in `[a, b]` with identical messages collapsed.
pub fn invalid_message(kind: &str, name: &str, errs: &[FieldError]) -> String {
    let mut seen = std::collections::HashSet::new();
    let msgs: Vec<String> = errs
        .iter()
        .map(ToString::to_string)
        .filter(|m| seen.insert(m.clone()))
        .collect();
    let agg = match msgs.len() {
        1 => msgs[0].clone(),
        _ => format!("[{}]", msgs.join(", ")),
    };
    format!("{kind} {} is invalid: {agg}", go_quote(name))
}

/// A string as Go's `json.Marshal` writes it: JSON, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped as `\uXXXX` (Go escapes them for HTML safety by default).
pub fn go_json_string(s: &str) -> String {
    let json = serde_json::Value::String(s.to_owned()).to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Go's `strconv.Quote`: escapes quotes, backslashes, control and invisible characters, keeps
/// printable Unicode as it is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint` without a Unicode table: ASCII space counts, other
/// spaces, C1 controls and the common invisible format characters (zero-width, bidi marks,
/// BOM, soft hyphen) do not.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_whitespace() || c.is_control() {
        return false;
    }
    !matches!(c as u32,
        0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2064
        | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("ht\ttp"), r#""ht\ttp""#);
        assert_eq!(go_quote("a\u{0}b"), r#""a\x00b""#);
        assert_eq!(go_quote("\u{200b}http"), r#""\u200bhttp""#);
        assert_eq!(go_quote("a\"b"), r#""a\"b""#);
        assert_eq!(go_quote("a\\b"), r#""a\\b""#);
        assert_eq!(go_quote("é"), "\"é\"");
        assert_eq!(go_quote("ｈｔｔｐ"), "\"ｈｔｔｐ\"");
    }

    #[test]
    fn bodies_match_upstream() {
        let e = FieldError::invalid(
            "spec.ports[0].port",
            BadValue::Int(0),
            "must be between 1 and 65535, inclusive",
        );
        assert_eq!(
            e.to_string(),
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        let e = FieldError::not_supported(
            "spec.ports[0].protocol",
            BadValue::Str("HTTP".into()),
            &["UDP", "TCP", "SCTP"],
        );
        assert_eq!(
            e.to_string(),
            r#"spec.ports[0].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP""#
        );
        assert_eq!(
            FieldError::required("spec.ports[1].name", "").to_string(),
            "spec.ports[1].name: Required value"
        );
        let e = FieldError::invalid(
            "spec.clusterIPs",
            BadValue::string_list(&["10.0.0.5"]),
            "failed to allocate IP 10.0.0.5: provided IP is already allocated",
        );
        assert_eq!(
            e.to_string(),
            r#"spec.clusterIPs: Invalid value: ["10.0.0.5"]: failed to allocate IP 10.0.0.5: provided IP is already allocated"#
        );
    }

    #[test]
    fn aggregates_like_new_invalid() {
        let a = FieldError::required("spec.ports[1].name", "");
        assert_eq!(
            invalid_message("Service", "s", std::slice::from_ref(&a)),
            r#"Service "s" is invalid: spec.ports[1].name: Required value"#
        );
        let b = FieldError::invalid(
            "spec.ports[0].port",
            BadValue::Int(0),
            "must be between 1 and 65535, inclusive",
        );
        assert_eq!(
            invalid_message("Service", "s", &[b.clone(), a.clone(), a]),
            r#"Service "s" is invalid: [spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, spec.ports[1].name: Required value]"#
        );
    }
}
