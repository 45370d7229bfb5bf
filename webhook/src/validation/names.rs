//! Primitive validators: IANA service names, DNS-1123 labels and subdomains, qualified names and
//! port numbers.
//!
//! They return the list of upstream messages that apply, in upstream's order, all of them (not the
//! first failure), so that callers can turn each into one field error like the apiserver does. They
//! work on bytes with ASCII-only classes: Go measures strings in bytes and its regular expressions
//! here are ASCII, so `"ééééééééé"` (9 characters, 18 bytes) is too long for a port name, and an
//! anchored `$` never matches before a trailing newline.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_allocators::field::{BadValue, FieldError};

use super::findings::{Findings, bad_str};
use super::json::IntOrStr;
use super::{LetterMessage, Options};

/// Longest IANA service name, in bytes (RFC 6335 §5.1).
pub const PORT_NAME_MAX_LEN: usize = 15;
/// Longest DNS-1123 label, in bytes.
pub const DNS1123_LABEL_MAX_LEN: usize = 63;
/// Longest DNS-1123 subdomain, in bytes.
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest name part of a qualified name, in bytes.
pub const QUALIFIED_NAME_MAX_LEN: usize = 63;

const PORT_NAME_TOO_LONG: &str = "must be no more than 15 characters";
const PORT_NAME_CHARSET: &str = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
const PORT_NAME_LETTER_OR_NUMBER: &str = "must contain at least one letter or number (a-z, 0-9)";
const PORT_NAME_LETTER: &str = "must contain at least one letter (a-z)";
const PORT_NAME_DOUBLE_HYPHEN: &str = "must not contain consecutive hyphens";
const PORT_NAME_EDGE_HYPHEN: &str = "must not begin or end with a hyphen";

const DNS1123_LABEL_TOO_LONG: &str = "must be no more than 63 characters";
// The double spaces after the example commas are upstream's (its RegexError helper), not a typo.
const DNS1123_LABEL_FORMAT: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
     characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
     '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

const DNS1123_SUBDOMAIN_TOO_LONG: &str = "must be no more than 253 characters";
const DNS1123_SUBDOMAIN_FORMAT: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. \
     'example.com', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const QUALIFIED_NAME_FORMAT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must \
     start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex \
     used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME_SLASHES: &str = "a qualified name must consist of alphanumeric characters, '-', '_' \
     or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
     '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional \
     DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";

/// The message of an out-of-range port number.
pub(crate) const PORT_NUM_RANGE: &str = "must be between 1 and 65535, inclusive";

/// Whether `port` is a port number (1-65535): [`is_valid_port_num`] without a list.
pub(crate) fn port_num_ok(port: i64) -> bool {
    (1..=65535).contains(&port)
}

/// Checks an IANA service name (RFC 6335 §5.1, lowercase only): the syntax of container port names
/// and of named `targetPort`/probe/lifecycle port references. Empty means valid.
///
/// Unlike a DNS label it needs a letter (`"80"` is refused) and refuses `--` (`"xn--x"` too), but it
/// may start with a digit (`"8080-tcp"` is fine). The messages come in upstream's order; `""` gets
/// the charset and the letter messages, as upstream has no separate "empty" message.
pub fn is_valid_port_name(name: &str, opts: &Options) -> Vec<&'static str> {
    let bytes = name.as_bytes();
    let mut errs = Vec::new();
    if bytes.len() > PORT_NAME_MAX_LEN {
        errs.push(PORT_NAME_TOO_LONG);
    }
    let charset_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    if bytes.is_empty() || !bytes.iter().all(charset_ok) {
        errs.push(PORT_NAME_CHARSET);
    }
    if !bytes.iter().any(u8::is_ascii_lowercase) {
        errs.push(match opts.letter_message {
            LetterMessage::LetterOrNumber => PORT_NAME_LETTER_OR_NUMBER,
            LetterMessage::LetterOnly => PORT_NAME_LETTER,
        });
    }
    if name.contains("--") {
        errs.push(PORT_NAME_DOUBLE_HYPHEN);
    }
    if bytes.first() == Some(&b'-') || bytes.last() == Some(&b'-') {
        errs.push(PORT_NAME_EDGE_HYPHEN);
    }
    errs
}

/// Whether `label` matches `[a-z0-9]([-a-z0-9]*[a-z0-9])?` in full.
fn matches_dns1123_label(label: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (label.first(), label.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && label.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// Checks a DNS-1123 label: the syntax of Service port names (which, unlike container port names,
/// may be all digits, like `"80"`, or contain `--`). Empty means valid.
pub fn is_dns1123_label(value: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LEN {
        errs.push(DNS1123_LABEL_TOO_LONG);
    }
    if !matches_dns1123_label(value.as_bytes()) {
        errs.push(DNS1123_LABEL_FORMAT);
    }
    errs
}

/// Checks a DNS-1123 subdomain (dot-separated labels): the prefix of a qualified name. Empty means
/// valid. Like upstream, the individual labels have no length limit of their own here.
pub fn is_dns1123_subdomain(value: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        errs.push(DNS1123_SUBDOMAIN_TOO_LONG);
    }
    if !value.as_bytes().split(|b| *b == b'.').all(matches_dns1123_label) {
        errs.push(DNS1123_SUBDOMAIN_FORMAT);
    }
    errs
}

/// Whether `name` matches `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` in full.
fn matches_qualified_name_part(name: &[u8]) -> bool {
    match (name.first(), name.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Checks a qualified name (`[prefix/]name`, the syntax of `appProtocol`, e.g. `kubernetes.io/h2c`
/// or `HTTP`). Empty means valid.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let mut parts = value.split('/');
    let first = parts.next().unwrap_or_default();
    let name = match (parts.next(), parts.next()) {
        (None, _) => first,
        (Some(name), None) => {
            if first.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    is_dns1123_subdomain(first)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        // Upstream gives up on the name part when there is more than one slash.
        (Some(_), Some(_)) => return vec![QUALIFIED_NAME_SLASHES.to_owned()],
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX_LEN {
        errs.push(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX_LEN} characters"
        ));
    }
    if !matches_qualified_name_part(name.as_bytes()) {
        errs.push(format!("name part {QUALIFIED_NAME_FORMAT}"));
    }
    errs
}

/// Checks a port number: valid iff 1 <= `port` <= 65535. Takes `i64` so that any integer a caller
/// holds can be checked without a lossy cast. Empty means valid.
pub fn is_valid_port_num(port: i64) -> Vec<&'static str> {
    if port_num_ok(port) {
        Vec::new()
    } else {
        vec![PORT_NUM_RANGE]
    }
}

/// A port reference as written: a number or a name (`targetPort`, `httpGet.port`, ...), borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRef<'p> {
    /// A number.
    Int(i32),
    /// A name.
    Str(&'p str),
}

impl<'p> PortRef<'p> {
    /// The reference in a typed `IntOrString`.
    pub fn of(port: &'p IntOrString) -> Self {
        match port {
            IntOrString::Int(n) => PortRef::Int(*n),
            IntOrString::String(s) => PortRef::Str(s),
        }
    }

    /// The reference in a decoded [`IntOrStr`].
    pub fn of_doc(port: &'p IntOrStr<'_>) -> Self {
        match port {
            IntOrStr::Int(n) => PortRef::Int(*n),
            IntOrStr::Str(s) => PortRef::Str(s),
        }
    }
}

/// [`validate_port_num_or_name`] reporting into `sink`; `field` is only rendered for errors kept.
pub(crate) fn check_port_num_or_name(
    port: PortRef<'_>,
    field: impl Fn() -> String,
    opts: &Options,
    sink: &mut Findings<'_>,
) {
    match port {
        PortRef::Int(n) => {
            if !port_num_ok(i64::from(n)) {
                sink.report(|| FieldError::invalid(field(), BadValue::Int(i64::from(n)), PORT_NUM_RANGE));
            }
        }
        PortRef::Str(s) => {
            for m in is_valid_port_name(s, opts) {
                sink.report(|| FieldError::invalid(field(), bad_str(s), m));
            }
        }
    }
}

/// Validates a port that is either a number or an IANA service name (`targetPort`, `httpGet.port`,
/// `tcpSocket.port`): one `Invalid` error at `field` per message. A numeric string such as `"8080"`
/// is a *name* and therefore invalid (it has no letter), as upstream decides.
pub fn validate_port_num_or_name(port: &IntOrString, field: &str, opts: &Options) -> Vec<FieldError> {
    let mut sink = Findings::all();
    check_port_num_or_name(PortRef::of(port), || field.to_owned(), opts, &mut sink);
    sink.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHARSET: &str = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
    const LETTER: &str = "must contain at least one letter or number (a-z, 0-9)";
    const LETTER_NEW: &str = "must contain at least one letter (a-z)";
    const DOUBLE: &str = "must not contain consecutive hyphens";
    const EDGE: &str = "must not begin or end with a hyphen";
    const LONG: &str = "must be no more than 15 characters";
    const LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    const SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const QNAME: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

    fn port_name(s: &str) -> Vec<&'static str> {
        is_valid_port_name(s, &Options::default())
    }

    #[test]
    fn iana_valid_names() {
        for s in [
            "http",
            "h",
            "a1",
            "1a",
            "http-80",
            "a-b-c",
            "abcdefghijklmno",
            "8080-tcp",
            "z9",
        ] {
            assert!(port_name(s).is_empty(), "{s:?}");
        }
    }

    #[test]
    fn iana_executed_table() {
        // The table of values and message lists executed against upstream (reference §1.1).
        let cases: &[(&str, &[&str])] = &[
            ("80", &[LETTER]),
            ("1-2", &[LETTER]),
            ("", &[CHARSET, LETTER]),
            ("-http", &[EDGE]),
            ("http-", &[EDGE]),
            ("ht--tp", &[DOUBLE]),
            ("xn--foo", &[DOUBLE]),
            ("HTTP", &[CHARSET, LETTER]),
            ("é", &[CHARSET, LETTER]),
            ("ｈｔｔｐ", &[CHARSET, LETTER]),
            ("http_alt", &[CHARSET]),
            ("ht tp", &[CHARSET]),
            ("ht\ntp", &[CHARSET]),
            ("http\n", &[CHARSET]),
            ("abcdefghijklmnop", &[LONG]),
            ("ééééééééé", &[LONG, CHARSET, LETTER]),
            ("-", &[LETTER, EDGE]),
            ("--", &[LETTER, DOUBLE, EDGE]),
        ];
        for (value, want) in cases {
            assert_eq!(&port_name(value), want, "{value:?}");
        }
    }

    #[test]
    fn iana_every_message_at_once() {
        assert_eq!(port_name("-0123456789--012-"), vec![LONG, LETTER, DOUBLE, EDGE]);
        assert_eq!(port_name("-A--"), vec![CHARSET, LETTER, DOUBLE, EDGE]);
    }

    #[test]
    fn iana_newer_letter_message() {
        let opts = Options {
            letter_message: LetterMessage::LetterOnly,
        };
        assert_eq!(is_valid_port_name("80", &opts), vec![LETTER_NEW]);
        assert_eq!(is_valid_port_name("", &opts), vec![CHARSET, LETTER_NEW]);
        assert!(is_valid_port_name("http", &opts).is_empty());
    }

    #[test]
    fn dns_labels() {
        for s in ["http", "80", "a--b", "xn--x", "a", &"a".repeat(63)] {
            assert!(is_dns1123_label(s).is_empty(), "{s:?}");
        }
        for s in ["-a", "a-", "A", "a_b", "", "é", "a.b", "a\n", "Bad_Name"] {
            assert_eq!(is_dns1123_label(s), vec![LABEL], "{s:?}");
        }
        assert_eq!(
            is_dns1123_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
        assert_eq!(
            is_dns1123_label(&"-".repeat(64)),
            vec!["must be no more than 63 characters", LABEL]
        );
    }

    #[test]
    fn dns_subdomains() {
        for s in ["example.com", "a", "kubernetes.io", "a-b.c-d.e", "1.2.3"] {
            assert!(is_dns1123_subdomain(s).is_empty(), "{s:?}");
        }
        for s in ["", ".", "a.", ".a", "a..b", "Example.com", "a_b.com", "-a.com"] {
            assert_eq!(is_dns1123_subdomain(s), vec![SUBDOMAIN], "{s:?}");
        }
        let long = format!("{}.com", "a".repeat(250));
        assert_eq!(
            is_dns1123_subdomain(&long),
            vec!["must be no more than 253 characters"]
        );
    }

    #[test]
    fn qualified_names() {
        for s in [
            "HTTP",
            "http",
            "kubernetes.io/h2c",
            "example.com/My_Name.v2",
            "a",
            &"a".repeat(63),
        ] {
            assert!(is_qualified_name(s).is_empty(), "{s:?}");
        }
        assert_eq!(is_qualified_name("a b"), vec![QNAME]);
        assert_eq!(
            is_qualified_name(""),
            vec!["name part must be non-empty".to_owned(), QNAME.into()]
        );
        assert_eq!(is_qualified_name("/x"), vec!["prefix part must be non-empty"]);
        assert_eq!(
            is_qualified_name("x/"),
            vec!["name part must be non-empty".to_owned(), QNAME.into()]
        );
        assert_eq!(
            is_qualified_name(&"a".repeat(64)),
            vec!["name part must be no more than 63 characters"]
        );
        assert_eq!(
            is_qualified_name("Example.com/x"),
            vec![format!("prefix part {SUBDOMAIN}")]
        );
        assert_eq!(
            is_qualified_name("a/b/c"),
            vec![
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ]
        );
        assert_eq!(
            is_qualified_name("-/-"),
            vec![format!("prefix part {SUBDOMAIN}"), QNAME.to_owned()]
        );
    }

    #[test]
    fn port_numbers() {
        for p in [1, 80, 65535] {
            assert!(is_valid_port_num(p).is_empty());
        }
        for p in [
            0,
            -1,
            65536,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(
                is_valid_port_num(p),
                vec!["must be between 1 and 65535, inclusive"]
            );
        }
    }

    #[test]
    fn num_or_name_renders_like_upstream() {
        let opts = Options::default();
        let f = |p: IntOrString| -> Vec<String> {
            validate_port_num_or_name(&p, "spec.ports[0].targetPort", &opts)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert!(f(IntOrString::Int(8080)).is_empty());
        assert!(f(IntOrString::String("http".into())).is_empty());
        assert_eq!(
            f(IntOrString::Int(0)),
            ["spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            f(IntOrString::Int(-5)),
            ["spec.ports[0].targetPort: Invalid value: -5: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            f(IntOrString::String("8080".into())),
            [
                r#"spec.ports[0].targetPort: Invalid value: "8080": must contain at least one letter or number (a-z, 0-9)"#
            ]
        );
        assert_eq!(
            f(IntOrString::String("-x-".into())),
            [r#"spec.ports[0].targetPort: Invalid value: "-x-": must not begin or end with a hyphen"#]
        );
        assert_eq!(
            f(IntOrString::String(String::new())),
            [
                r#"spec.ports[0].targetPort: Invalid value: "": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                r#"spec.ports[0].targetPort: Invalid value: "": must contain at least one letter or number (a-z, 0-9)"#,
            ]
        );
        assert_eq!(
            f(IntOrString::String("ht\ttp".into())),
            [
                r#"spec.ports[0].targetPort: Invalid value: "ht\ttp": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#
            ]
        );
    }
}
