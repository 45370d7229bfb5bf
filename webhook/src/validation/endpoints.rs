//! Addresses of hand-written `Endpoints` (core/v1) and `EndpointSlice`s (discovery.k8s.io/v1) that
//! kube-proxy cannot use.
//!
//! # Rules
//!
//! Upstream duplicates (kube-apiserver's `ValidateEndpointIP`, k/k v1.37.2
//! `pkg/apis/core/validation`, called by `validateEndpointAddress` and by discovery's
//! `validateEndpoints`; messages byte-for-byte, same field paths): an address may not be
//! * unspecified (`0.0.0.0`, `::`): `may not be unspecified (<ip>)`;
//! * loopback (`127.0.0.0/8`, `::1`): `may not be in the loopback range (127.0.0.0/8, ::1/128)`;
//! * link-local unicast (`169.254.0.0/16`, `fe80::/10`):
//!   `may not be in the link-local range (169.254.0.0/16, fe80::/10)`;
//! * link-local multicast (`224.0.0.0/24`, and in IPv6 every multicast address of link-local
//!   scope, `ffX2::/16`, which is what Go's `IsLinkLocalMulticast` tests whatever the message says):
//!   `may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)`.
//!
//! Addresses are parsed as the apiserver does (`ParseIPSloppy`: IPv4 parts with leading zeros are
//! decimal) and an IPv4-mapped IPv6 address counts as its IPv4 address (Go's `To4`). Other
//! multicast addresses pass, as upstream's do. Unparseable addresses are left to the apiserver,
//! which refuses them with its own syntax errors before any webhook is called.
//!
//! Portico's own rule, which upstream lacks: an address may not be the clusterIP (any of
//! `spec.clusterIPs`) of a Service, `may not be the clusterIP of a Service (<namespace>/<name>)`,
//! an `Invalid value` on the same field. kube-proxy does not support virtual IPs as endpoint
//! targets (the Kubernetes documentation of Services without selectors says so for "other"
//! Services); this includes the Service's *own* clusterIP, which would make kube-proxy forward a
//! virtual IP to itself. The lookup goes through a [`ServiceIpIndex`]; without one, or before it
//! holds the Service, the rule does not fire.
//!
//! Field paths are upstream's: `subsets[i].addresses[j].ip` and
//! `subsets[i].notReadyAddresses[j].ip` for Endpoints, `endpoints[i].addresses[j]` for
//! EndpointSlices of `addressType` `IPv4` or `IPv6` (`FQDN` slices hold names, not addresses).
//!
//! # Who is checked
//!
//! Only writes a controller did not make ([`controller_managed`]): an object carrying either
//! managed-by label (`endpoints.kubernetes.io/managed-by`, `endpointslice.kubernetes.io/managed-by`,
//! any value, even empty) passes untouched, as do the Endpoints and the EndpointSlice
//! `default/kubernetes` that kube-apiserver's own endpoint reconciler writes (without a managed-by
//! label). A user can set a managed-by label too and so opt out: the rule is a guard rail against
//! mistakes, not a security boundary (upstream's own rules still apply to every write).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use portico_allocators::parse_ipv4_sloppy;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use super::findings::Findings;
use super::json::{self, Text};
use super::{BadValue, DecodeError, FieldError};

/// Label the Endpoints controllers set (`endpoint-controller`, Portico's own value).
pub const ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// Label the EndpointSlice controllers set (`endpointslice-controller.k8s.io`,
/// `endpointslicemirroring-controller.k8s.io`, Portico's own value, ...).
pub const ENDPOINTSLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Upstream's message for an unspecified address; the value is appended in parentheses.
pub const UNSPECIFIED: &str = "may not be unspecified";
/// Upstream's message for a loopback address.
pub const LOOPBACK: &str = "may not be in the loopback range (127.0.0.0/8, ::1/128)";
/// Upstream's message for a link-local unicast address.
pub const LINK_LOCAL: &str = "may not be in the link-local range (169.254.0.0/16, fe80::/10)";
/// Upstream's message for a link-local multicast address.
pub const LINK_LOCAL_MULTICAST: &str =
    "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)";
/// Portico's message for a Service's clusterIP; `(<namespace>/<name>)` is appended.
pub const CLUSTER_IP: &str = "may not be the clusterIP of a Service";

/// A Service, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which Service has a clusterIP, cluster-wide. Implemented by
/// [`crate::service_ips::ClusterIpIndex`] (fed by a watch of Services) and by closures (tests).
pub trait ServiceIpIndex: Send + Sync {
    /// The Service one of whose `spec.clusterIPs` is `ip` (IPv4-mapped IPv6 addresses are given as
    /// IPv4), if any; the first by namespace and name should two claim it.
    fn service_with_cluster_ip(&self, ip: IpAddr) -> Option<ServiceRef>;
}

impl<F> ServiceIpIndex for F
where
    F: Fn(IpAddr) -> Option<ServiceRef> + Send + Sync,
{
    fn service_with_cluster_ip(&self, ip: IpAddr) -> Option<ServiceRef> {
        self(ip)
    }
}

/// Parses an address as Go's `netutils.ParseIPSloppy` does (IPv4 parts may have leading zeros,
/// read as decimal) and returns IPv4-mapped IPv6 addresses as IPv4, as Go's `To4` sees them.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_sloppy(s) {
        return Some(IpAddr::V4(v4));
    }
    if !s.contains(':') {
        return None;
    }
    let ip = match s.parse::<Ipv6Addr>() {
        Ok(v6) => v6,
        Err(_) => {
            // An embedded IPv4 tail with leading zeros: rewrite it and parse again.
            let (head, tail) = s.rsplit_once(':')?;
            if !tail.contains('.') {
                return None;
            }
            format!("{head}:{}", parse_ipv4_sloppy(tail)?).parse().ok()?
        }
    };
    Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
}

/// Upstream's special ranges (`ValidateEndpointIP`): the one an address is in decides its
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Unspecified,
    Loopback,
    LinkLocal,
    LinkLocalMulticast,
}

impl Special {
    /// The special range of a parsed address, if any, tested in upstream's order.
    fn of(ip: IpAddr) -> Option<Self> {
        let (unspecified, loopback, link_local, ll_multicast) = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                (
                    v4.is_unspecified(),
                    v4.is_loopback(),
                    o[0] == 169 && o[1] == 254,
                    o[0] == 224 && o[1] == 0 && o[2] == 0,
                )
            }
            IpAddr::V6(v6) => {
                let s0 = v6.segments()[0];
                (
                    v6.is_unspecified(),
                    v6.is_loopback(),
                    s0 & 0xffc0 == 0xfe80,
                    s0 & 0xff0f == 0xff02,
                )
            }
        };
        if unspecified {
            Some(Special::Unspecified)
        } else if loopback {
            Some(Special::Loopback)
        } else if link_local {
            Some(Special::LinkLocal)
        } else if ll_multicast {
            Some(Special::LinkLocalMulticast)
        } else {
            None
        }
    }

    /// Upstream's message; `raw` is the address as written (the unspecified message quotes it).
    fn detail(self, raw: &str) -> String {
        match self {
            Special::Unspecified => format!("{UNSPECIFIED} ({raw})"),
            Special::Loopback => LOOPBACK.to_owned(),
            Special::LinkLocal => LINK_LOCAL.to_owned(),
            Special::LinkLocalMulticast => LINK_LOCAL_MULTICAST.to_owned(),
        }
    }
}

/// The errors of one endpoint address at `field`: upstream's special-range rule, else Portico's
/// clusterIP rule. Unparseable addresses yield nothing (the apiserver's syntax rules own them).
pub fn validate_endpoint_ip(
    raw: &str,
    field: &str,
    services: Option<&dyn ServiceIpIndex>,
) -> Vec<FieldError> {
    let mut sink = Findings::all();
    check_endpoint_ip(raw, || field.to_owned(), services, &mut sink);
    sink.into_vec()
}

/// [`validate_endpoint_ip`] reporting into `sink`: `field` is only rendered, and the error only
/// built, for an error the sink keeps (an 8 MB list of loopback addresses is that many errors).
fn check_endpoint_ip(
    raw: &str,
    field: impl Fn() -> String,
    services: Option<&dyn ServiceIpIndex>,
    sink: &mut Findings<'_>,
) {
    let Some(ip) = parse_ip_sloppy(raw) else {
        return;
    };
    let value = || BadValue::Str(raw.to_owned());
    if let Some(special) = Special::of(ip) {
        sink.report(|| FieldError::invalid(field(), value(), special.detail(raw)));
        return;
    }
    if let Some(svc) = services.and_then(|s| s.service_with_cluster_ip(ip)) {
        sink.report(|| FieldError::invalid(field(), value(), format!("{CLUSTER_IP} ({svc})")));
    }
}

// What the rules read of an object, borrowed from it: every other field is skipped unbuilt, so
// the same views serve a `serde_json::Value` and a raw slice of the review body.

#[derive(Deserialize, Default)]
struct MetaView<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    labels: Option<BTreeMap<Cow<'a, str>, IgnoredAny>>,
}

#[derive(Deserialize)]
struct MetaTop<'a> {
    #[serde(borrow, default)]
    metadata: Option<MetaView<'a>>,
}

/// A subset, its address lists left raw: they are read one address at a time.
#[derive(Deserialize)]
struct SubsetView<'a> {
    #[serde(borrow, default)]
    addresses: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "notReadyAddresses")]
    not_ready_addresses: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AddressView<'a> {
    #[serde(borrow)]
    ip: Cow<'a, str>,
}

/// The subsets as one piece, lists and all: what serde_json is given to phrase a decode error
/// exactly as it always has (with the position in `subsets`), once reading them one by one
/// failed.
#[derive(Deserialize)]
struct SubsetWhole<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)]
    addresses: Option<Vec<AddressView<'a>>>,
    #[serde(borrow, default, rename = "notReadyAddresses")]
    #[allow(dead_code)]
    not_ready_addresses: Option<Vec<AddressView<'a>>>,
}

/// An endpoint of a slice, its addresses left raw: they are read one at a time.
#[derive(Deserialize)]
struct EndpointView<'a> {
    #[serde(borrow)]
    addresses: &'a RawValue,
}

/// An endpoint as serde_json is given it to phrase a decode error exactly as it always has.
#[derive(Deserialize)]
struct EndpointWhole<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    addresses: Vec<Text<'a>>,
}

#[derive(Deserialize)]
struct EndpointsRawTop<'a> {
    #[serde(borrow, default)]
    subsets: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SliceRawTop<'a> {
    #[serde(borrow, default, rename = "addressType")]
    address_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    endpoints: Option<&'a RawValue>,
}

fn managed(meta: &MetaView<'_>, namespace: Option<&str>) -> bool {
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(ENDPOINTS_MANAGED_BY) || l.contains_key(ENDPOINTSLICE_MANAGED_BY))
    {
        return true;
    }
    let ns = meta.namespace.as_deref().filter(|s| !s.is_empty()).or(namespace);
    ns == Some("default") && meta.name.as_deref() == Some("kubernetes")
}

/// Whether the Endpoints or EndpointSlice `object` (in `namespace`, the request's, when its
/// metadata has none) is a controller's and passes untouched: it carries a managed-by label
/// (either kind's, any value), or it is `default/kubernetes`, which kube-apiserver's endpoint
/// reconciler writes. Unreadable metadata is not a controller's.
pub fn controller_managed(object: &Value, namespace: Option<&str>) -> bool {
    serde_json::value::to_raw_value(object).is_ok_and(|raw| controller_managed_raw(&raw, namespace))
}

/// [`controller_managed`] for an object given as raw JSON (a slice of the review body).
pub fn controller_managed_raw(object: &RawValue, namespace: Option<&str>) -> bool {
    let meta = json::decode::<MetaTop<'_>>(object)
        .ok()
        .and_then(|t| t.metadata)
        .unwrap_or_default();
    managed(&meta, namespace)
}

/// A decode error at `path`, serde_json's error as it is (position included).
fn decode_error(path: &str) -> impl FnOnce(serde_json::Error) -> DecodeError + '_ {
    move |source| DecodeError {
        path: path.to_owned(),
        source,
    }
}

/// Collects what `check` reports.
fn collected(
    check: impl FnOnce(&mut Findings<'_>) -> Result<(), DecodeError>,
) -> Result<Vec<FieldError>, DecodeError> {
    let mut errs = Findings::all();
    check(&mut errs)?;
    Ok(errs.into_vec())
}

/// Validates the addresses of an Endpoints object given as JSON (an AdmissionReview's `object`);
/// only `subsets` is read. Does not look at the managed-by labels ([`controller_managed`]).
pub fn validate_endpoints_value(
    object: &Value,
    services: Option<&dyn ServiceIpIndex>,
) -> Result<Vec<FieldError>, DecodeError> {
    let raw = serde_json::value::to_raw_value(object).map_err(decode_error("object"))?;
    validate_endpoints_raw(&raw, services)
}

/// [`validate_endpoints_value`] for an object given as raw JSON (a slice of the review body).
pub fn validate_endpoints_raw(
    object: &RawValue,
    services: Option<&dyn ServiceIpIndex>,
) -> Result<Vec<FieldError>, DecodeError> {
    collected(|sink| validate_endpoints_raw_into(object, services, sink))
}

/// [`validate_endpoints_raw`] reporting into `sink` as it goes, one address at a time, so a
/// capped sink keeps time and memory bounded however many addresses are wrong.
pub fn validate_endpoints_raw_into(
    object: &RawValue,
    services: Option<&dyn ServiceIpIndex>,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let top: EndpointsRawTop<'_> = json::decode_exact(object).map_err(decode_error("object"))?;
    check_subsets(top.subsets, services, sink)
}

/// The addresses of `subsets` (raw, absent or `null`), one at a time.
fn check_subsets(
    subsets: Option<&RawValue>,
    services: Option<&dyn ServiceIpIndex>,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let Some(subsets) = subsets else {
        return Ok(());
    };
    // Each subset's ready addresses come before its not-ready ones, whatever the order of the
    // two lists in the object: both are held raw, and read in that order.
    let read = json::try_for_each::<SubsetView<'_>, _>(subsets, |i, subset| {
        for (name, list) in [
            ("addresses", subset.addresses),
            ("notReadyAddresses", subset.not_ready_addresses),
        ] {
            let Some(list) = list else { continue };
            json::for_each::<AddressView<'_>, _>(list, |j, address| {
                let field = || format!("subsets[{i}].{name}[{j}].ip");
                check_endpoint_ip(&address.ip, field, services, sink);
            })?;
        }
        Ok(())
    });
    match read {
        Ok(_) => Ok(()),
        // serde_json phrases the error, reading the subsets in one piece as it always has.
        Err(e) => Err(
            serde_json::from_str::<Option<Vec<SubsetWhole<'_>>>>(subsets.get())
                .err()
                .unwrap_or(e),
        )
        .map_err(decode_error("subsets")),
    }
}

/// Validates the addresses of an EndpointSlice given as JSON; only `addressType` and `endpoints`
/// are read, and only `IPv4` and `IPv6` slices hold addresses. Does not look at the managed-by
/// labels ([`controller_managed`]).
pub fn validate_endpoint_slice_value(
    object: &Value,
    services: Option<&dyn ServiceIpIndex>,
) -> Result<Vec<FieldError>, DecodeError> {
    let raw = serde_json::value::to_raw_value(object).map_err(decode_error("object"))?;
    validate_endpoint_slice_raw(&raw, services)
}

/// [`validate_endpoint_slice_value`] for an object given as raw JSON (a slice of the review body).
pub fn validate_endpoint_slice_raw(
    object: &RawValue,
    services: Option<&dyn ServiceIpIndex>,
) -> Result<Vec<FieldError>, DecodeError> {
    collected(|sink| validate_endpoint_slice_raw_into(object, services, sink))
}

/// [`validate_endpoint_slice_raw`] reporting into `sink` as it goes.
pub fn validate_endpoint_slice_raw_into(
    object: &RawValue,
    services: Option<&dyn ServiceIpIndex>,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let top: SliceRawTop<'_> = json::decode_exact(object).map_err(decode_error("object"))?;
    check_slice(top.address_type, top.endpoints, services, sink)
}

/// The addresses of an EndpointSlice's `endpoints` (raw), one endpoint at a time, if its
/// `addressType` (raw) says they are addresses.
fn check_slice(
    address_type: Option<&RawValue>,
    endpoints: Option<&RawValue>,
    services: Option<&dyn ServiceIpIndex>,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let address_type: Option<Cow<'_, str>> = address_type.and_then(|t| json::decode(t).ok());
    if !matches!(address_type.as_deref(), Some("IPv4" | "IPv6")) {
        return Ok(());
    }
    let Some(raw) = endpoints else { return Ok(()) };
    // One endpoint at a time: judged as it is read, never all held at once.
    let read = json::decode_seed(
        raw,
        EachEndpoint {
            services,
            sink: Some(sink),
        },
    );
    match read {
        Ok(()) => Ok(()),
        // serde_json phrases the error, reading the list as it always has.
        Err(e) => {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let exact = serde::de::DeserializeSeed::deserialize(
                EachEndpoint {
                    services: None,
                    sink: None,
                },
                &mut de,
            );
            Err(exact.err().unwrap_or(e)).map_err(decode_error("endpoints"))
        }
    }
}

/// An Endpoints or EndpointSlice of a review, read in one pass (its 8 MB list is walked once
/// here, once more when judged, not once per question): the members every review reads, the
/// metadata a controller's object is recognised by, and the lists the rules judge. It answers
/// exactly as [`controller_managed_raw`] and [`validate_endpoints_raw_into`] (or
/// [`validate_endpoint_slice_raw_into`]) do, and leaves to them the objects where a derived
/// reader would refuse what this pass reads (a repeated member, an undecodable key).
pub(crate) struct EndpointsObject<'a> {
    object: &'a RawValue,
    slice: bool,
    /// `kind`, `metadata` and the lists (`subsets`, or `addressType` and `endpoints`).
    members: Option<[Option<&'a RawValue>; 4]>,
    /// Whether each of those came more than once.
    repeats: [bool; 4],
}

impl<'a> EndpointsObject<'a> {
    /// Reads an Endpoints (`slice` false) or an EndpointSlice.
    pub(crate) fn read(object: &'a RawValue, slice: bool) -> Self {
        let read = if slice {
            json::members_and_repeats(object, ["kind", "metadata", "addressType", "endpoints"])
        } else {
            json::members_and_repeats(object, ["kind", "metadata", "subsets"])
                .map(|([k, m, s], [rk, rm, rs])| ([k, m, s, None], [rk, rm, rs, false]))
        };
        let (members, repeats) = match read {
            Some((members, repeats)) => (Some(members), repeats),
            None => (None, [false; 4]),
        };
        EndpointsObject {
            object,
            slice,
            members,
            repeats,
        }
    }

    /// `kind`, raw.
    pub(crate) fn kind(&self) -> Option<&'a RawValue> {
        self.members.and_then(|m| m[0])
    }

    /// `metadata`, raw.
    pub(crate) fn metadata(&self) -> Option<&'a RawValue> {
        self.members.and_then(|m| m[1])
    }

    /// [`controller_managed_raw`].
    pub(crate) fn controller_managed(&self, namespace: Option<&str>) -> bool {
        // A repeated `metadata` is refused by the reader of `metadata`: not a controller's.
        if self.members.is_none() || self.repeats[1] {
            return false;
        }
        let meta = self
            .metadata()
            .and_then(|m| json::decode::<Option<MetaView<'_>>>(m).ok().flatten())
            .unwrap_or_default();
        managed(&meta, namespace)
    }

    /// [`validate_endpoints_raw_into`] or [`validate_endpoint_slice_raw_into`].
    pub(crate) fn check(
        &self,
        services: Option<&dyn ServiceIpIndex>,
        sink: &mut Findings<'_>,
    ) -> Result<(), DecodeError> {
        let (Some(m), [_, _, false, false]) = (self.members, self.repeats) else {
            // Refused by the object's reader: it phrases why.
            return if self.slice {
                validate_endpoint_slice_raw_into(self.object, services, sink)
            } else {
                validate_endpoints_raw_into(self.object, services, sink)
            };
        };
        if self.slice {
            check_slice(m[2], m[3], services, sink)
        } else {
            check_subsets(m[2], services, sink)
        }
    }
}

/// Reads an EndpointSlice's `endpoints` (a list, or `null`) and judges each endpoint's addresses
/// as it comes; without a sink, only reads it, each endpoint in one piece (to phrase an error).
struct EachEndpoint<'s, 'k, 'f> {
    services: Option<&'s dyn ServiceIpIndex>,
    sink: Option<&'k mut Findings<'f>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for EachEndpoint<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EachEndpoint<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of endpoints")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(sink) = self.sink else {
            while seq.next_element::<EndpointWhole<'de>>()?.is_some() {}
            return Ok(());
        };
        let mut i = 0;
        while let Some(endpoint) = seq.next_element::<EndpointView<'de>>()? {
            json::for_each_strict::<Text<'_>, _>(endpoint.addresses, |j, address| {
                let field = || format!("endpoints[{i}].addresses[{j}]");
                check_endpoint_ip(&address, field, self.services, sink);
            })
            .map_err(serde::de::Error::custom)?;
            i += 1;
        }
        Ok(())
    }
}

/// An in-memory [`ServiceIpIndex`] from `(namespace, name, clusterIPs)`, for tests and callers
/// with a fixed set of Services. `None` and unparseable clusterIPs are skipped.
pub fn static_service_ips<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a str, &'a [&'a str])>,
) -> impl ServiceIpIndex + 'static {
    let mut map: BTreeMap<IpAddr, ServiceRef> = BTreeMap::new();
    for (namespace, name, ips) in services {
        let svc = ServiceRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        for ip in ips.iter().filter_map(|ip| parse_ip_sloppy(ip)) {
            map.entry(ip)
                .and_modify(|held| {
                    if svc < *held {
                        *held = svc.clone();
                    }
                })
                .or_insert_with(|| svc.clone());
        }
    }
    move |ip: IpAddr| map.get(&ip).cloned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svcs() -> impl ServiceIpIndex {
        static_service_ips([
            ("default", "kubernetes", &["10.96.0.1"][..]),
            ("db", "postgres", &["10.96.0.20", "fd00:10:96::20"][..]),
            ("web", "front", &["None"][..]),
        ])
    }

    fn one(raw: &str) -> Option<String> {
        let s = svcs();
        let errs = validate_endpoint_ip(raw, "f", Some(&s));
        assert!(errs.len() <= 1, "{errs:?}");
        errs.first().map(ToString::to_string)
    }

    #[test]
    fn every_address_class_in_both_families() {
        let cases: &[(&str, Option<&str>)] = &[
            // IPv4
            ("10.0.0.1", None),
            ("192.168.1.10", None),
            (
                "0.0.0.0",
                Some(r#"f: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)"#),
            ),
            (
                "127.0.0.1",
                Some(
                    r#"f: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
                ),
            ),
            (
                "127.255.0.9",
                Some(
                    r#"f: Invalid value: "127.255.0.9": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
                ),
            ),
            (
                "169.254.169.254",
                Some(
                    r#"f: Invalid value: "169.254.169.254": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#,
                ),
            ),
            (
                "224.0.0.251",
                Some(
                    r#"f: Invalid value: "224.0.0.251": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"#,
                ),
            ),
            ("224.0.1.1", None), // other multicast: accepted, as upstream
            ("239.1.1.1", None),
            (
                "10.96.0.1",
                Some(
                    r#"f: Invalid value: "10.96.0.1": may not be the clusterIP of a Service (default/kubernetes)"#,
                ),
            ),
            (
                "10.96.0.20",
                Some(
                    r#"f: Invalid value: "10.96.0.20": may not be the clusterIP of a Service (db/postgres)"#,
                ),
            ),
            ("10.96.0.21", None),
            // Leading zeros are decimal (ParseIPSloppy); the value is quoted as written.
            (
                "127.000.000.001",
                Some(
                    r#"f: Invalid value: "127.000.000.001": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
                ),
            ),
            (
                "010.096.000.001",
                Some(
                    r#"f: Invalid value: "010.096.000.001": may not be the clusterIP of a Service (default/kubernetes)"#,
                ),
            ),
            // IPv6
            ("2001:db8::1", None),
            (
                "::",
                Some(r#"f: Invalid value: "::": may not be unspecified (::)"#),
            ),
            (
                "::1",
                Some(r#"f: Invalid value: "::1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#),
            ),
            (
                "fe80::1",
                Some(
                    r#"f: Invalid value: "fe80::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#,
                ),
            ),
            (
                "febf:ffff::1",
                Some(
                    r#"f: Invalid value: "febf:ffff::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#,
                ),
            ),
            ("fec0::1", None),
            (
                "ff02::fb",
                Some(
                    r#"f: Invalid value: "ff02::fb": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"#,
                ),
            ),
            (
                "ff12::1",
                Some(
                    r#"f: Invalid value: "ff12::1": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"#,
                ),
            ),
            ("ff05::2", None),
            (
                "fd00:10:96::20",
                Some(
                    r#"f: Invalid value: "fd00:10:96::20": may not be the clusterIP of a Service (db/postgres)"#,
                ),
            ),
            (
                "fd00:10:96:0::20",
                Some(
                    r#"f: Invalid value: "fd00:10:96:0::20": may not be the clusterIP of a Service (db/postgres)"#,
                ),
            ),
            // IPv4-mapped IPv6 counts as IPv4 (Go's To4).
            (
                "::ffff:127.0.0.1",
                Some(
                    r#"f: Invalid value: "::ffff:127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
                ),
            ),
            (
                "::ffff:0.0.0.0",
                Some(r#"f: Invalid value: "::ffff:0.0.0.0": may not be unspecified (::ffff:0.0.0.0)"#),
            ),
            (
                "::ffff:10.96.0.1",
                Some(
                    r#"f: Invalid value: "::ffff:10.96.0.1": may not be the clusterIP of a Service (default/kubernetes)"#,
                ),
            ),
            (
                "::ffff:127.000.0.1",
                Some(
                    r#"f: Invalid value: "::ffff:127.000.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
                ),
            ),
            // Not addresses: the apiserver's syntax rules answer.
            ("", None),
            ("None", None),
            ("10.0.0", None),
            ("10.0.0.256", None),
            ("1.2.3.4.5", None),
            ("fe80::1%eth0", None),
            ("example.com", None),
        ];
        for (raw, want) in cases {
            assert_eq!(one(raw).as_deref(), *want, "{raw}");
        }
    }

    #[test]
    fn without_an_index_only_upstream_rules_apply() {
        assert!(validate_endpoint_ip("10.96.0.1", "f", None).is_empty());
        assert_eq!(validate_endpoint_ip("127.0.0.1", "f", None).len(), 1);
    }

    #[test]
    fn endpoints_addresses_and_not_ready_addresses() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "ext", "namespace": "app"},
            "subsets": [
                {"addresses": [{"ip": "10.1.0.5"}, {"ip": "127.0.0.1"}],
                 "notReadyAddresses": [{"ip": "fe80::1"}],
                 "ports": [{"port": 80}]},
                {"addresses": [{"ip": "10.96.0.20"}], "notReadyAddresses": [{"ip": "0.0.0.0"}]},
            ]
        });
        let s = svcs();
        let errs = validate_endpoints_value(&obj, Some(&s)).unwrap();
        let got: Vec<(String, String)> = errs.iter().map(|e| (e.field.clone(), e.body())).collect();
        assert_eq!(
            got,
            vec![
                (
                    "subsets[0].addresses[1].ip".into(),
                    format!(r#"Invalid value: "127.0.0.1": {LOOPBACK}"#)
                ),
                (
                    "subsets[0].notReadyAddresses[0].ip".into(),
                    format!(r#"Invalid value: "fe80::1": {LINK_LOCAL}"#)
                ),
                (
                    "subsets[1].addresses[0].ip".into(),
                    r#"Invalid value: "10.96.0.20": may not be the clusterIP of a Service (db/postgres)"#
                        .into()
                ),
                (
                    "subsets[1].notReadyAddresses[0].ip".into(),
                    r#"Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)"#.into()
                ),
            ]
        );
        assert!(errs.iter().all(|e| e.kind.reason() == "FieldValueInvalid"));
        // Nothing to check, and the upstream message of the whole refusal.
        assert!(
            validate_endpoints_value(&json!({"metadata": {"name": "x"}}), Some(&s))
                .unwrap()
                .is_empty()
        );
        assert!(
            validate_endpoints_value(&json!({"subsets": null}), Some(&s))
                .unwrap()
                .is_empty()
        );
        assert!(
            validate_endpoints_value(&json!({"subsets": [{}]}), Some(&s))
                .unwrap()
                .is_empty()
        );
        let one = json!({"subsets": [{"addresses": [{"ip": "127.0.0.1"}]}]});
        let errs = validate_endpoints_value(&one, Some(&s)).unwrap();
        assert_eq!(
            portico_allocators::field::invalid_message("Endpoints", "ext", &errs),
            r#"Endpoints "ext" is invalid: subsets[0].addresses[0].ip: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#
        );
    }

    #[test]
    fn endpoint_slice_addresses_by_address_type() {
        let s = svcs();
        let v4 = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "ext-1"}, "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.0.5"]},
                {"addresses": ["10.1.0.6", "169.254.1.1"], "conditions": {"ready": false}},
                {"addresses": ["10.96.0.1"]},
            ]
        });
        let got: Vec<String> = validate_endpoint_slice_value(&v4, Some(&s))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                format!(r#"endpoints[1].addresses[1]: Invalid value: "169.254.1.1": {LINK_LOCAL}"#),
                r#"endpoints[2].addresses[0]: Invalid value: "10.96.0.1": may not be the clusterIP of a Service (default/kubernetes)"#.to_owned(),
            ]
        );
        let v6 = json!({"addressType": "IPv6", "endpoints": [{"addresses": ["::1"]}, {"addresses": ["fd00:10:96::20"]}, {"addresses": ["2001:db8::5"]}]});
        let got: Vec<String> = validate_endpoint_slice_value(&v6, Some(&s))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                format!(r#"endpoints[0].addresses[0]: Invalid value: "::1": {LOOPBACK}"#),
                r#"endpoints[1].addresses[0]: Invalid value: "fd00:10:96::20": may not be the clusterIP of a Service (db/postgres)"#.to_owned(),
            ]
        );
        // FQDN slices hold names; an unknown type is upstream's to refuse.
        for t in ["FQDN", "IP", ""] {
            let obj = json!({"addressType": t, "endpoints": [{"addresses": ["127.0.0.1"]}]});
            assert!(
                validate_endpoint_slice_value(&obj, Some(&s)).unwrap().is_empty(),
                "{t}"
            );
        }
        assert!(
            validate_endpoint_slice_value(&json!({"addressType": "IPv4"}), Some(&s))
                .unwrap()
                .is_empty()
        );
    }

    /// The reading of Endpoints before addresses were read one at a time: every subset decoded
    /// at once by serde_json, then judged. The oracle of `reads_endpoints_as_before`.
    fn endpoints_as_before(
        object: &str,
        services: Option<&dyn ServiceIpIndex>,
    ) -> Result<Vec<String>, String> {
        let top: EndpointsRawTop<'_> = serde_json::from_str(object).map_err(|e| format!("object: {e}"))?;
        let subsets: Vec<SubsetWhole<'_>> = match top.subsets {
            None => Vec::new(),
            Some(raw) => serde_json::from_str::<Option<Vec<SubsetWhole<'_>>>>(raw.get())
                .map_err(|e| format!("subsets: {e}"))?
                .unwrap_or_default(),
        };
        let mut out = Vec::new();
        for (i, subset) in subsets.iter().enumerate() {
            for (name, list) in [
                ("addresses", &subset.addresses),
                ("notReadyAddresses", &subset.not_ready_addresses),
            ] {
                for (j, a) in list.iter().flatten().enumerate() {
                    let field = format!("subsets[{i}].{name}[{j}].ip");
                    out.extend(
                        validate_endpoint_ip(&a.ip, &field, services)
                            .iter()
                            .map(ToString::to_string),
                    );
                }
            }
        }
        Ok(out)
    }

    fn endpoints_now(object: &str, services: Option<&dyn ServiceIpIndex>) -> Result<Vec<String>, String> {
        let raw: &RawValue = serde_json::from_str(object).unwrap();
        validate_endpoints_raw(raw, services)
            .map(|errs| errs.iter().map(ToString::to_string).collect())
            .map_err(|e| format!("{}: {}", e.path, e.source))
    }

    #[test]
    fn reads_endpoints_as_before() {
        let s = svcs();
        let objects = [
            r#"{"subsets": [{"notReadyAddresses": [{"ip": "::1"}], "addresses": [{"ip": "127.0.0.1"}, {"ip": "10.96.0.1"}]}, {"addresses": null}]}"#,
            r#"{"subsets": [{"addresses": [{"ip": "0.0.0.0", "x": [1]}], "ports": [{"port": 1}]}, {}, {"notReadyAddresses": []}]}"#,
            r#"{"subsets": [[[{"ip": "127.0.0.1"}], [{"ip": "169.254.0.1"}]]]}"#,
            r#"{"subsets": [{"addresses": [{"ip": "127.0.0.1"}, {"ip": 7}]}]}"#,
            r#"{"subsets": [{"addresses": [{"ip": "127.0.0.1"}]}, {"addresses": [{}]}]}"#,
            r#"{"subsets": [{"addresses": [{"ip": "127.0.0.1"}], "addresses": []}]}"#,
            r#"{"subsets": [{"addresses": {"ip": "127.0.0.1"}}]}"#,
            r#"{"subsets": [{"addresses": [{"ip": "127.0.0.1"}]}, 7]}"#,
            r#"{"subsets": [{"notReadyAddresses": [{"ip": "\ud800"}]}]}"#,
            r#"{"subsets": [{"addresses": [{"ip": "127.0.0.\u0031"}]}]}"#,
            r#"{"subsets": {"a": 1}}"#,
            r#"{"subsets": "x", "subsets": null}"#,
            r#"{"subsets": null}"#,
            r#"[{"addresses": []}]"#,
            "7",
            "{}",
        ];
        for object in objects {
            assert_eq!(
                endpoints_now(object, Some(&s)),
                endpoints_as_before(object, Some(&s)),
                "{object}"
            );
            assert_eq!(
                endpoints_now(object, None),
                endpoints_as_before(object, None),
                "{object}"
            );
        }
        // A thousand errors, kept in order, with the capped sink counting the rest.
        let many = format!(
            r#"{{"subsets": [{{"notReadyAddresses": [{{"ip": "::"}}], "addresses": [{}]}}]}}"#,
            vec![r#"{"ip": "127.0.0.1"}"#; 1000].join(",")
        );
        assert_eq!(endpoints_now(&many, None), endpoints_as_before(&many, None));
        let raw: &RawValue = serde_json::from_str(&many).unwrap();
        let mut capped = Findings::capped(3);
        validate_endpoints_raw_into(raw, None, &mut capped).unwrap();
        assert_eq!(capped.kept()[2].field, "subsets[0].addresses[2].ip");
        assert_eq!(capped.more(), 998);
    }

    /// The reading of EndpointSlices before addresses were read one at a time: each endpoint
    /// decoded whole by serde_json. The oracle of `reads_slices_as_before`.
    fn slice_as_before(object: &str, services: Option<&dyn ServiceIpIndex>) -> Result<Vec<String>, String> {
        let top: SliceRawTop<'_> = serde_json::from_str(object).map_err(|e| format!("object: {e}"))?;
        let t: Option<Cow<'_, str>> = top.address_type.and_then(|t| serde_json::from_str(t.get()).ok());
        let (Some("IPv4" | "IPv6"), Some(raw)) = (t.as_deref(), top.endpoints) else {
            return Ok(Vec::new());
        };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        serde::de::DeserializeSeed::deserialize(
            EachEndpoint {
                services: None,
                sink: None,
            },
            &mut de,
        )
        .map_err(|e| format!("endpoints: {e}"))?;
        let endpoints: Vec<EndpointWhole<'_>> = serde_json::from_str::<Option<_>>(raw.get())
            .unwrap()
            .unwrap_or_default();
        let mut out = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                let field = format!("endpoints[{i}].addresses[{j}]");
                out.extend(
                    validate_endpoint_ip(a, &field, services)
                        .iter()
                        .map(ToString::to_string),
                );
            }
        }
        Ok(out)
    }

    #[test]
    fn reads_slices_as_before() {
        let s = svcs();
        for object in [
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1", "10.96.0.1"]}, {"addresses": []}, {"addresses": ["0.0.0.0"], "x": 1}]}"#,
            r#"{"addressType": "IPv6", "endpoints": [{"addresses": ["::1", "fe80::1"]}, {"addresses": ["ff02::1"]}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"]}, {"addresses": null}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"]}, {}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1", 7]}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "addresses": []}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [[["127.0.0.1"]]]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": "127.0.0.1"}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.\u0031"]}, 7]}"#,
            r#"{"addressType": "IPv4", "endpoints": {"a": 1}}"#,
            r#"{"addressType": "IPv4", "endpoints": null}"#,
            r#"{"addressType": "FQDN", "endpoints": [{"addresses": 7}]}"#,
        ] {
            let raw: &RawValue = serde_json::from_str(object).unwrap();
            let now = validate_endpoint_slice_raw(raw, Some(&s))
                .map(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())
                .map_err(|e| format!("{}: {}", e.path, e.source));
            assert_eq!(now, slice_as_before(object, Some(&s)), "{object}");
        }
    }

    #[test]
    fn one_pass_reads_as_the_separate_readers() {
        let s = svcs();
        let objects = [
            r#"{"kind": "Endpoints", "metadata": {"name": "db"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}]}]}"#,
            r#"{"metadata": {"name": "kubernetes", "namespace": "default"}, "subsets": [{"addresses": [{"ip": "::1"}]}]}"#,
            r#"{"metadata": {"name": "kubernetes"}, "metadata": {"name": "kubernetes"}, "subsets": []}"#,
            r#"{"metadata": {"labels": {"endpoints.kubernetes.io/managed-by": "x"}}, "subsets": 7}"#,
            r#"{"metadata": {"labels": 7}, "subsets": [{"addresses": [{"ip": "0.0.0.0"}]}]}"#,
            r#"{"metadata": null, "subsets": null}"#,
            r#"{"metadata": ["kubernetes", "default"], "subsets": []}"#,
            r#"{"subsets": [], "subsets": [{"addresses": [{"ip": "127.0.0.1"}]}]}"#,
            r#"{"subsets": [{"addresses": [{"ip": 7}]}]}"#,
            r#"{"\ud800": 1, "subsets": []}"#,
            r#"{"kind": 7, "kind": "Endpoints"}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1", "10.96.0.20"]}]}"#,
            r#"{"addressType": "IPv6", "endpoints": [{"addresses": ["::1"]}], "addressType": "IPv6"}"#,
            r#"{"addressType": "FQDN", "endpoints": 7}"#,
            r#"{"addressType": "IPv4", "endpoints": [{"addresses": null}]}"#,
            r#"{"addressType": "IPv4", "endpoints": [{}], "endpoints": []}"#,
            r#"{"metadata": {"name": "kubernetes", "namespace": "default"}, "addressType": 4}"#,
        ];
        for object in objects {
            let raw: &RawValue = serde_json::from_str(object).unwrap();
            for slice in [false, true] {
                let read = EndpointsObject::read(raw, slice);
                for ns in [None, Some("default"), Some("app")] {
                    assert_eq!(
                        read.controller_managed(ns),
                        controller_managed_raw(raw, ns),
                        "{object} {ns:?}"
                    );
                }
                let by_one_pass = collected(|sink| read.check(Some(&s), sink));
                let separately = if slice {
                    validate_endpoint_slice_raw(raw, Some(&s))
                } else {
                    validate_endpoints_raw(raw, Some(&s))
                };
                let show = |r: Result<Vec<FieldError>, DecodeError>| {
                    r.map(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())
                        .map_err(|e| format!("{}: {}", e.path, e.source))
                };
                assert_eq!(show(by_one_pass), show(separately), "{object} {slice}");
                let head = json::members(raw, ["kind", "metadata"]).unwrap_or_default();
                assert_eq!(
                    read.kind().map(RawValue::get),
                    head[0].map(RawValue::get),
                    "{object}"
                );
                assert_eq!(
                    read.metadata().map(RawValue::get),
                    head[1].map(RawValue::get),
                    "{object}"
                );
            }
        }
    }

    #[test]
    fn undecodable_lists_name_their_field() {
        let e = validate_endpoints_value(&json!({"subsets": {"a": 1}}), None).unwrap_err();
        assert_eq!(e.path, "subsets");
        let e =
            validate_endpoints_value(&json!({"subsets": [{"addresses": [{"ip": 7}]}]}), None).unwrap_err();
        assert_eq!(e.path, "subsets");
        let e = validate_endpoint_slice_value(
            &json!({"addressType": "IPv4", "endpoints": [{"addresses": "x"}]}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.path, "endpoints");
    }

    #[test]
    fn raw_and_value_readers_agree() {
        let s = svcs();
        let objects = [
            json!({"metadata": {"name": "e", "namespace": "app"}, "subsets": [
                {"addresses": [{"ip": "127.0.0.1", "hostname": "a"}, {"ip": "10.96.0.20"}],
                 "notReadyAddresses": [{"ip": "fe80::1", "targetRef": {"kind": "Pod", "name": "p"}}]}]}),
            json!({"metadata": {"name": "e"}, "subsets": null}),
            json!({"metadata": {"name": "e"}}),
            // An escaped string (owned, not borrowed, by the raw reader).
            serde_json::from_str(r#"{"subsets": [{"addresses": [{"ip": "127.0.0.\u0031"}]}]}"#).unwrap(),
            json!({"subsets": {"a": 1}}),
            json!({"subsets": [{"addresses": [{"ip": 7}]}]}),
            json!({"subsets": [{"addresses": [{}]}]}),
        ];
        for obj in &objects {
            let raw = RawValue::from_string(obj.to_string()).unwrap();
            let by_value = validate_endpoints_value(obj, Some(&s)).map_err(|e| e.path);
            let by_raw = validate_endpoints_raw(&raw, Some(&s)).map_err(|e| e.path);
            assert_eq!(by_value, by_raw, "{obj}");
        }
        let slices = [
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.96.0.1", "10.0.0.1"], "conditions": {"ready": true}}, {"addresses": ["0.0.0.0"]}]}),
            json!({"addressType": "IPv6", "endpoints": [{"addresses": ["ff02::1"]}]}),
            json!({"addressType": "FQDN", "endpoints": [{"addresses": ["localhost"]}]}),
            json!({"addressType": "IPv4", "endpoints": null}),
            json!({"addressType": "IPv4", "endpoints": [{"addresses": "x"}]}),
            json!({"addressType": 4, "endpoints": [{"addresses": ["127.0.0.1"]}]}),
        ];
        for obj in &slices {
            let raw = RawValue::from_string(obj.to_string()).unwrap();
            let by_value = validate_endpoint_slice_value(obj, Some(&s)).map_err(|e| e.path);
            let by_raw = validate_endpoint_slice_raw(&raw, Some(&s)).map_err(|e| e.path);
            assert_eq!(by_value, by_raw, "{obj}");
        }
        let raw = RawValue::from_string("7".into()).unwrap();
        assert_eq!(validate_endpoints_raw(&raw, None).unwrap_err().path, "object");
        for (obj, want) in [
            (
                json!({"metadata": {"name": "x", "labels": {ENDPOINTS_MANAGED_BY: "endpoint-controller"}}}),
                true,
            ),
            (
                json!({"metadata": {"name": "kubernetes", "namespace": "default"}}),
                true,
            ),
            (json!({"metadata": {"name": "kubernetes"}}), true),
            (json!({"metadata": {"name": "x", "labels": {"a": "b"}}}), false),
            (json!({"metadata": {"name": "x", "labels": 7}}), false),
            (json!({"metadata": 7}), false),
        ] {
            let raw = RawValue::from_string(obj.to_string()).unwrap();
            assert_eq!(controller_managed(&obj, Some("default")), want, "{obj}");
            assert_eq!(controller_managed_raw(&raw, Some("default")), want, "{obj}");
        }
    }

    #[test]
    fn controller_managed_objects_are_recognised() {
        let managed = [
            json!({"metadata": {"name": "web", "labels": {ENDPOINTS_MANAGED_BY: "endpoint-controller"}}}),
            json!({"metadata": {"name": "web", "labels": {ENDPOINTS_MANAGED_BY: "endpoint-controller.portico"}}}),
            json!({"metadata": {"name": "web", "labels": {ENDPOINTS_MANAGED_BY: ""}}}),
            json!({"metadata": {"name": "web-x", "labels": {ENDPOINTSLICE_MANAGED_BY: "endpointslice-controller.k8s.io"}}}),
            json!({"metadata": {"name": "web-x", "labels": {ENDPOINTSLICE_MANAGED_BY: "endpointslicemirroring-controller.k8s.io"}}}),
            json!({"metadata": {"name": "kubernetes", "namespace": "default"}}),
        ];
        for obj in &managed {
            assert!(controller_managed(obj, Some("app")), "{obj}");
        }
        assert!(controller_managed(
            &json!({"metadata": {"name": "kubernetes"}}),
            Some("default")
        ));
        let hand_written = [
            json!({"metadata": {"name": "web"}}),
            json!({"metadata": {"name": "web", "labels": {"app": "web", "kubernetes.io/service-name": "web"}}}),
            json!({"metadata": {"name": "kubernetes", "namespace": "app"}}),
            json!({"metadata": {"name": "kubernetes-x", "namespace": "default"}}),
            json!({}),
        ];
        for obj in &hand_written {
            assert!(!controller_managed(obj, Some("app")), "{obj}");
        }
        assert!(!controller_managed(
            &json!({"metadata": {"name": "kubernetes"}}),
            Some("app")
        ));
    }

    #[test]
    fn the_static_index_keeps_the_first_service_of_a_shared_address() {
        let s = static_service_ips([("b", "two", &["10.0.0.9"][..]), ("a", "one", &["10.0.0.9"][..])]);
        assert_eq!(
            s.service_with_cluster_ip("10.0.0.9".parse().unwrap())
                .map(|r| r.to_string()),
            Some("a/one".to_owned())
        );
    }
}
