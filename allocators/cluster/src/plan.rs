//! Pure allocation decisions for one Service admission.
//!
//! [`plan_service`] looks only at the request and the configured families: it says which values
//! to take ([`IpClaim`], [`PortClaim`]: a requested value or the next free one), which values the
//! apiserver would copy from the old object (written back explicitly), and which values the
//! Service stops holding. [`ServicePlan::execute_ips`] / [`ServicePlan::execute_ports`] then run
//! the claims against a [`RangeState`], all or nothing, and [`ServicePlan::patch`] turns the
//! result into the JSON patch of the admission response.
//!
//! Requests the apiserver refuses anyway for reasons unrelated to allocation (an unparseable or
//! changed clusterIP, `SingleStack` with two IPs, unknown families or policies) are passed
//! through untouched: no value is taken and the apiserver answers with its own message. What
//! upstream reports from its allocator (taken, out of range, full, family not configured,
//! `RequireDualStack` on a single stack, a duplicate `(protocol, nodePort)` in an update) is
//! refused here with upstream's field, code and message.
//!
//! Deliberate simplifications: on UPDATE, a dual-stack upgrade happens when the request asks for
//! it (`RequireDualStack`, two clusterIPs or families, or a switch to `PreferDualStack`), which
//! approximates upstream's `isMatchingPreferDualStackClusterIPFields`; IP families are
//! allocated in `spec.clusterIPs` order (upstream iterates a map).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::jiff::Timestamp;
use portico_allocators::field::{BadValue, FieldError};
use portico_allocators::{AllocError, IpRange, PortAllocator, Refusal, Request, parse_service_ip};

use super::ip_pool::IpPool;
use super::range_state::{Claimed, RangeState, ServiceRef};

/// The admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// CREATE.
    Create,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 }
    }

    /// The family of a range.
    pub fn of_range(range: &IpRange) -> Self {
        IpFamily::of(range.cidr().addr())
    }

    /// `IPv4` / `IPv6`, as in `spec.ipFamilies`.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// Parses a `spec.ipFamilies` entry.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }

    /// The other family.
    pub fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value a Service holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// A clusterIP.
    Ip(IpAddr),
    /// A nodePort or healthCheckNodePort.
    Port(i32),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ip(ip) => ip.fmt(f),
            Value::Port(p) => p.fmt(f),
        }
    }
}

impl TryFrom<Value> for IpAddr {
    type Error = ();
    fn try_from(v: Value) -> Result<Self, ()> {
        match v {
            Value::Ip(ip) => Ok(ip),
            Value::Port(_) => Err(()),
        }
    }
}

impl TryFrom<Value> for i32 {
    type Error = ();
    fn try_from(v: Value) -> Result<Self, ()> {
        match v {
            Value::Port(p) => Ok(p),
            Value::Ip(_) => Err(()),
        }
    }
}

/// A requested value, or the next free one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Want<T> {
    /// This value (refused if taken or out of range).
    Value(T),
    /// The next free value, dynamic band first.
    Next,
}

impl<T> Want<T> {
    /// Upstream's metric scope: `static` for a requested value, `dynamic` for the next one.
    pub fn scope(&self) -> &'static str {
        match self {
            Want::Value(_) => "static",
            Want::Next => "dynamic",
        }
    }
}

/// One clusterIP to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpClaim {
    /// Its family (the range it comes from).
    pub family: IpFamily,
    /// Its index in `spec.clusterIPs`.
    pub index: usize,
    /// What to take.
    pub want: Want<IpAddr>,
    /// The requested string as sent (for the refusal message).
    pub requested: Option<String>,
}

/// One node port to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortClaim {
    /// What to take.
    pub want: Want<i32>,
    /// How a refusal is reported (`spec.ports[i].nodePort` 422, or the 500s).
    pub request: Request<'static>,
    /// `spec.ports` entries that receive the value.
    pub patch_ports: Vec<usize>,
    /// Whether `spec.healthCheckNodePort` receives the value.
    pub patch_health_check: bool,
}

impl PortClaim {
    /// The node port `np` that `spec.ports[index]` asks for (nothing to patch).
    fn requested(index: usize, np: i32) -> Self {
        PortClaim {
            want: Want::Value(np),
            request: Request::NodePort { index, node_port: np },
            patch_ports: Vec::new(),
            patch_health_check: false,
        }
    }
}

/// Values taken by executing a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// `(clusterIPs index, address)` per executed IP claim.
    pub ips: Vec<(usize, IpAddr)>,
    /// One port per [`PortClaim`], in order.
    pub ports: Vec<i32>,
}

/// What to do for one Service admission.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServicePlan {
    /// The Service (name empty for `generateName`).
    pub service: ServiceRef,
    /// ClusterIPs to take, in `spec.clusterIPs` order.
    pub ip_claims: Vec<IpClaim>,
    /// Node ports to take: service ports in order, then the health-check port.
    pub port_claims: Vec<PortClaim>,
    /// Values the Service held before and no longer holds after this request. Informational:
    /// they are free once the watch sees the Service without them.
    pub released: Vec<Value>,
    /// Why nothing is done although the Service would need values (the apiserver refuses the
    /// request itself), for logs.
    pub passthrough: Option<&'static str>,
    /// `spec.clusterIPs` as the apiserver will see it, `""` where a claim fills in; empty when
    /// the clusterIP fields are left alone.
    cluster_ips: Vec<String>,
    /// `spec.clusterIPs` as requested (for refusals when the fields are left alone).
    requested_ips: Vec<String>,
    /// `spec.ports[i].nodePort` values set without a claim (kept from the old object, or shared
    /// by TCP and UDP of one service port).
    fixed_ports: Vec<(usize, i32)>,
    /// `spec.healthCheckNodePort` kept from the old object.
    fixed_health_check: Option<i32>,
}

impl ServicePlan {
    fn new(service: ServiceRef) -> Self {
        ServicePlan {
            service,
            ..ServicePlan::default()
        }
    }

    /// Whether the plan neither takes a value nor patches anything.
    pub fn is_noop(&self) -> bool {
        self.ip_claims.is_empty()
            && self.port_claims.is_empty()
            && self.cluster_ips.is_empty()
            && self.fixed_ports.is_empty()
            && self.fixed_health_check.is_none()
    }

    /// The families the IP claims need, in claim order.
    pub fn ip_families(&self) -> Vec<IpFamily> {
        let mut out = Vec::new();
        for c in &self.ip_claims {
            if !out.contains(&c.family) {
                out.push(c.family);
            }
        }
        out
    }

    /// `spec.clusterIPs` as quoted in refusals (`""` for values still to pick).
    pub fn cluster_ips_field(&self) -> &[String] {
        if self.cluster_ips.is_empty() {
            &self.requested_ips
        } else {
            &self.cluster_ips
        }
    }

    /// Runs the claims of `family` against `state`, all or nothing.
    pub fn execute_ips(
        &self,
        family: IpFamily,
        state: &mut RangeState<IpPool>,
        expires: Timestamp,
        max_claims: usize,
    ) -> Result<Vec<(usize, IpAddr)>, Refusal> {
        let wanted = self.ip_claims.iter().filter(|c| c.family == family).count();
        too_many_claims(state.pending().len(), wanted, max_claims)?;
        let mut taken = Vec::new();
        let mut new = Vec::new();
        for claim in self.ip_claims.iter().filter(|c| c.family == family) {
            let result = match claim.want {
                Want::Value(ip) => state
                    .claim(ip, &self.service, expires)
                    .map(|how| {
                        if how == Claimed::New {
                            new.push(ip);
                        }
                        ip
                    })
                    .map_err(|e| {
                        e.refusal(Request::ClusterIp {
                            cluster_ips: self.cluster_ips_field(),
                            ip: claim.requested.as_deref().unwrap_or_default(),
                        })
                    }),
                Want::Next => state
                    .claim_next(&self.service, expires)
                    .inspect(|ip| new.push(*ip))
                    .map_err(|e| e.refusal(Request::NextClusterIp)),
            };
            match result {
                Ok(ip) => taken.push((claim.index, ip)),
                Err(refusal) => {
                    for ip in new {
                        state.unclaim(ip, &self.service);
                    }
                    return Err(refusal);
                }
            }
        }
        Ok(taken)
    }

    /// Runs the port claims against `state`, all or nothing: one port per claim.
    pub fn execute_ports(
        &self,
        state: &mut RangeState<PortAllocator>,
        expires: Timestamp,
        max_claims: usize,
    ) -> Result<Vec<i32>, Refusal> {
        too_many_claims(state.pending().len(), self.port_claims.len(), max_claims)?;
        let mut taken = Vec::new();
        let mut taken_set = HashSet::new();
        let mut new = Vec::new();
        for claim in &self.port_claims {
            let result = match claim.want {
                // Twice in one request is a conflict even though the claim would be "ours".
                Want::Value(port) if taken_set.contains(&port) => Err(AllocError::PortAllocated),
                Want::Value(port) => state.claim(port, &self.service, expires).map(|how| {
                    if how == Claimed::New {
                        new.push(port);
                    }
                    port
                }),
                Want::Next => state.claim_next(&self.service, expires).inspect(|p| new.push(*p)),
            };
            match result {
                Ok(port) => {
                    taken.push(port);
                    taken_set.insert(port);
                }
                Err(e) => {
                    for port in new {
                        state.unclaim(port, &self.service);
                    }
                    return Err(e.refusal(claim.request));
                }
            }
        }
        Ok(taken)
    }

    /// The JSON patch writing the assignment (and the values kept from the old object) into the
    /// Service. Empty when there is nothing to write.
    pub fn patch(&self, assignment: &Assignment) -> Patch {
        let mut ops = Vec::new();
        if !self.cluster_ips.is_empty() {
            let mut ips = self.cluster_ips.clone();
            for (index, ip) in &assignment.ips {
                if let Some(slot) = ips.get_mut(*index) {
                    *slot = ip.to_string();
                }
            }
            ops.push(add(
                &["spec", "clusterIP"],
                serde_json::Value::from(ips[0].clone()),
            ));
            ops.push(add(&["spec", "clusterIPs"], serde_json::Value::from(ips)));
        }
        let mut ports: Vec<(usize, i32)> = self.fixed_ports.clone();
        let mut health_check = self.fixed_health_check;
        for (claim, port) in self.port_claims.iter().zip(&assignment.ports) {
            ports.extend(claim.patch_ports.iter().map(|i| (*i, *port)));
            if claim.patch_health_check {
                health_check = Some(*port);
            }
        }
        ports.sort_unstable();
        for (i, port) in ports {
            let index = i.to_string();
            ops.push(add(
                &["spec", "ports", index.as_str(), "nodePort"],
                serde_json::Value::from(port),
            ));
        }
        if let Some(port) = health_check {
            ops.push(add(
                &["spec", "healthCheckNodePort"],
                serde_json::Value::from(port),
            ));
        }
        Patch(ops)
    }
}

/// Claims are bounded: beyond `max`, a 500 the client retries (the apiserver's own answer when
/// it cannot allocate), never a value handed out twice.
fn too_many_claims(pending: usize, wanted: usize, max: usize) -> Result<(), Refusal> {
    if pending + wanted > max {
        return Err(Refusal::Internal(format!(
            "too many allocations in flight ({pending} values handed out whose Service has not appeared yet); retry"
        )));
    }
    Ok(())
}

fn add(path: &[&str], value: serde_json::Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// Applies a patch from [`ServicePlan::patch`] to a Service (as the apiserver does with the
/// admission response), e.g. to show a dry-run result or in tests.
pub fn apply_patch(service: &Service, patch: &Patch) -> Result<Service, serde_json::Error> {
    let mut doc = serde_json::to_value(service)?;
    json_patch::patch(&mut doc, patch).map_err(serde::de::Error::custom)?;
    serde_json::from_value(doc)
}

/// Decides what a Service admission needs. `families` are the configured IP families, primary
/// first. `Err` holds the refusals to answer with (all 422 field errors of one status).
pub fn plan_service(
    op: Operation,
    new: Option<&Service>,
    old: Option<&Service>,
    families: &[IpFamily],
) -> Result<ServicePlan, Vec<Refusal>> {
    let service = new.or(old).map(service_ref).unwrap_or_default();
    let mut plan = ServicePlan::new(service);
    let empty = ServiceSpec::default();
    match (op, spec_of(new), spec_of(old)) {
        (Operation::Delete, _, old) => {
            if let Some(old) = old {
                plan.released = held_values(old);
            }
            Ok(plan)
        }
        (Operation::Update, Some(new), Some(old)) => {
            plan_update_ips(&mut plan, new, old, families)?;
            if plan.passthrough.is_none() {
                plan_update_ports(&mut plan, new, old)?;
            }
            finish(plan)
        }
        (Operation::Create | Operation::Update, new, _) => {
            let new = new.unwrap_or(&empty);
            plan_create_ips(&mut plan, new, families)?;
            if plan.passthrough.is_none() {
                plan_create_ports(&mut plan, new);
            }
            finish(plan)
        }
    }
}

fn spec_of(s: Option<&Service>) -> Option<&ServiceSpec> {
    s.and_then(|s| s.spec.as_ref())
}

fn finish(mut plan: ServicePlan) -> Result<ServicePlan, Vec<Refusal>> {
    if plan.passthrough.is_some() {
        return Ok(ServicePlan {
            service: std::mem::take(&mut plan.service),
            passthrough: plan.passthrough,
            ..ServicePlan::default()
        });
    }
    Ok(plan)
}

fn service_ref(s: &Service) -> ServiceRef {
    ServiceRef::new(
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// `spec.type`, defaulted.
/// The name a denial reports for the Service under review: its name, else its generateName.
pub(crate) fn review_name(new: Option<&Service>, old: Option<&Service>) -> String {
    new.or(old)
        .and_then(|s| {
            s.metadata
                .name
                .clone()
                .or_else(|| s.metadata.generate_name.clone())
        })
        .unwrap_or_default()
}

pub(crate) fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("ClusterIP")
}

fn needs_node_ports(spec: &ServiceSpec) -> bool {
    matches!(service_type(spec), "NodePort" | "LoadBalancer")
}

fn should_allocate_node_ports(spec: &ServiceSpec) -> bool {
    match service_type(spec) {
        "NodePort" => true,
        // v1 defaults allocateLoadBalancerNodePorts to true for LoadBalancers.
        "LoadBalancer" => spec.allocate_load_balancer_node_ports.unwrap_or(true),
        _ => false,
    }
}

fn needs_health_check(spec: &ServiceSpec) -> bool {
    service_type(spec) == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local")
}

/// `spec.clusterIPs`, or `[spec.clusterIP]` from a client that only knows the singular field.
pub(crate) fn cluster_ips_of(spec: &ServiceSpec) -> Vec<String> {
    match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => Vec::new(),
    }
}

fn is_headless(ips: &[String]) -> bool {
    ips.first().is_some_and(|ip| ip == "None")
}

fn node_port(p: &ServicePort) -> i32 {
    p.node_port.unwrap_or(0)
}

fn protocol(p: &ServicePort) -> &str {
    p.protocol.as_deref().unwrap_or("TCP")
}

/// The values a Service holds: its clusterIPs (not `None`) and its node ports (nodePorts and
/// health-check port), each once.
pub(crate) fn held_values(spec: &ServiceSpec) -> Vec<Value> {
    let mut out = BTreeSet::new();
    if service_type(spec) != "ExternalName" {
        for ip in cluster_ips_of(spec) {
            if let Ok(ip) = parse_service_ip(&ip) {
                out.insert(Value::Ip(ip));
            }
        }
    }
    for p in spec.ports.iter().flatten() {
        if node_port(p) != 0 {
            out.insert(Value::Port(node_port(p)));
        }
    }
    if let Some(hc) = spec.health_check_node_port.filter(|p| *p != 0) {
        out.insert(Value::Port(hc));
    }
    out.into_iter().collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Single,
    Prefer,
    Require,
}

fn parse_policy(s: Option<&str>) -> Result<Option<Policy>, ()> {
    match s {
        None => Ok(None),
        Some("SingleStack") => Ok(Some(Policy::Single)),
        Some("PreferDualStack") => Ok(Some(Policy::Prefer)),
        Some("RequireDualStack") => Ok(Some(Policy::Require)),
        Some(_) => Err(()),
    }
}

/// clusterIPs for a Service that had none (CREATE, or UPDATE from ExternalName).
fn plan_create_ips(
    plan: &mut ServicePlan,
    spec: &ServiceSpec,
    configured: &[IpFamily],
) -> Result<(), Vec<Refusal>> {
    if service_type(spec) == "ExternalName" {
        return Ok(());
    }
    let requested = cluster_ips_of(spec);
    if is_headless(&requested) {
        return Ok(());
    }
    if let (Some(ip), Some(ips)) = (&spec.cluster_ip, &spec.cluster_ips)
        && !ip.is_empty()
        && ips.first().is_some_and(|first| first != ip)
    {
        plan.passthrough = Some("clusterIP and clusterIPs[0] differ");
        return Ok(());
    }
    let Some(parsed) = parse_requested(&requested) else {
        plan.passthrough = Some("malformed clusterIPs");
        return Ok(());
    };
    let Some(families_field) = parse_families(spec.ip_families.as_deref().unwrap_or_default()) else {
        plan.passthrough = Some("malformed ipFamilies");
        return Ok(());
    };
    if parsed
        .iter()
        .zip(&families_field)
        .any(|(ip, fam)| IpFamily::of(*ip) != *fam)
    {
        plan.passthrough = Some("clusterIPs do not match ipFamilies");
        return Ok(());
    }
    let Ok(policy) = parse_policy(spec.ip_family_policy.as_deref()) else {
        plan.passthrough = Some("unknown ipFamilyPolicy");
        return Ok(());
    };
    // Upstream defaults a missing policy to SingleStack before checking it.
    let policy = policy.unwrap_or(Policy::Single);
    if policy == Policy::Single && (parsed.len() == 2 || families_field.len() == 2) {
        plan.passthrough = Some("SingleStack with two families");
        return Ok(());
    }

    // Infer families from the requested IPs.
    let mut errs = Vec::new();
    let mut fams = families_field;
    for (i, ip) in parsed.iter().enumerate() {
        if i >= fams.len() {
            let fam = IpFamily::of(*ip);
            if configured.contains(&fam) {
                fams.push(fam);
            } else {
                errs.push(invalid(
                    format!("spec.clusterIPs[{i}]"),
                    BadValue::string_list(&requested),
                    format!("{fam} is not configured on this cluster"),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if policy == Policy::Require && configured.len() < 2 {
        errs.push(invalid(
            "spec.ipFamilyPolicy".to_owned(),
            BadValue::Str("RequireDualStack".to_owned()),
            "this cluster is not configured for dual-stack services".to_owned(),
        ));
    }
    for (i, fam) in fams.iter().enumerate() {
        if !configured.contains(fam) {
            errs.push(invalid(
                format!("spec.ipFamilies[{i}]"),
                BadValue::Str(fam.as_str().to_owned()),
                "not configured on this cluster".to_owned(),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if fams.is_empty() {
        fams.push(configured[0]);
    }
    if policy != Policy::Single && fams.len() == 1 && configured.len() == 2 {
        fams.push(fams[0].other());
    }

    // Write the fields back only when a value is picked here: requested ones are already there.
    if fams.len() > parsed.len() {
        plan.cluster_ips = fams
            .iter()
            .enumerate()
            .map(|(i, _)| requested.get(i).cloned().unwrap_or_default())
            .collect();
    }
    plan.requested_ips = requested.clone();
    plan.ip_claims = fams
        .iter()
        .enumerate()
        .map(|(i, fam)| IpClaim {
            family: *fam,
            index: i,
            want: parsed.get(i).map_or(Want::Next, |ip| Want::Value(*ip)),
            requested: requested.get(i).cloned(),
        })
        .collect();
    Ok(())
}

fn invalid(field: String, value: BadValue, detail: String) -> Refusal {
    Refusal::Invalid(FieldError::invalid(field, value, detail))
}

/// Parses requested clusterIPs: at most two, valid, of different families.
fn parse_requested(ips: &[String]) -> Option<Vec<IpAddr>> {
    if ips.len() > 2 {
        return None;
    }
    let parsed = ips
        .iter()
        .map(|s| parse_service_ip(s).ok())
        .collect::<Option<Vec<_>>>()?;
    if parsed.len() == 2 && IpFamily::of(parsed[0]) == IpFamily::of(parsed[1]) {
        return None;
    }
    Some(parsed)
}

/// Parses `spec.ipFamilies`: at most two known, distinct families.
fn parse_families(fams: &[String]) -> Option<Vec<IpFamily>> {
    if fams.len() > 2 {
        return None;
    }
    let parsed = fams
        .iter()
        .map(|f| IpFamily::parse(f))
        .collect::<Option<Vec<_>>>()?;
    if parsed.len() == 2 && parsed[0] == parsed[1] {
        return None;
    }
    Some(parsed)
}

/// clusterIPs on UPDATE: type changes, keeping the old values, dual-stack upgrade/downgrade.
fn plan_update_ips(
    plan: &mut ServicePlan,
    new: &ServiceSpec,
    old: &ServiceSpec,
    configured: &[IpFamily],
) -> Result<(), Vec<Refusal>> {
    let old_ips = cluster_ips_of(old);
    if service_type(new) == "ExternalName" {
        if service_type(old) != "ExternalName" && !is_headless(&old_ips) {
            plan.released
                .extend(parse_all(&old_ips).into_iter().map(Value::Ip));
        }
        return Ok(());
    }
    if service_type(old) == "ExternalName" || old_ips.is_empty() {
        return plan_create_ips(plan, new, configured);
    }
    if is_headless(&old_ips) {
        return Ok(());
    }
    // What the apiserver does for a client that left the fields out: keep the old values.
    let new_field = new.cluster_ips.clone().unwrap_or_default();
    let new_ip = new.cluster_ip.clone().unwrap_or_default();
    let carry = new_field.is_empty() || new_ip.is_empty();
    let mut new_ips = if new_field.is_empty() {
        if new_ip.is_empty() || new_ip == old_ips[0] {
            old_ips.clone()
        } else {
            vec![new_ip]
        }
    } else {
        new_field
    };
    if new_ips[0] != old_ips[0] {
        plan.passthrough = Some("clusterIP changed (immutable)");
        return Ok(());
    }
    let Some(parsed) = parse_requested(&new_ips) else {
        plan.passthrough = Some("malformed clusterIPs");
        return Ok(());
    };
    let Ok(policy) = parse_policy(new.ip_family_policy.as_deref()) else {
        plan.passthrough = Some("unknown ipFamilyPolicy");
        return Ok(());
    };
    let old_policy = parse_policy(old.ip_family_policy.as_deref()).ok().flatten();
    let policy = policy.or(old_policy).unwrap_or(Policy::Single);
    let Some(new_families) = parse_families(new.ip_families.as_deref().unwrap_or_default()) else {
        plan.passthrough = Some("malformed ipFamilies");
        return Ok(());
    };

    if policy == Policy::Single {
        if old_ips.len() == 2 {
            // Downgrade: the secondary goes (the apiserver trims unchanged lists itself).
            plan.released
                .extend(parse_all(&old_ips[1..]).into_iter().map(Value::Ip));
            new_ips.truncate(1);
        }
        if carry {
            plan.cluster_ips = new_ips;
        }
        return Ok(());
    }
    if old_ips.len() == 2 {
        if new_ips.len() == 2 && new_ips[1] != old_ips[1] {
            plan.passthrough = Some("secondary clusterIP changed (immutable)");
        } else if carry {
            plan.cluster_ips = old_ips;
        }
        return Ok(());
    }
    // One old IP: upgrade to dual-stack only when the request asks for it (a PreferDualStack
    // Service left as it was is not upgraded behind its back).
    let asks = policy == Policy::Require
        || new_ips.len() == 2
        || new_families.len() == 2
        || (policy == Policy::Prefer && old_policy != Some(Policy::Prefer));
    if !asks {
        if carry {
            plan.cluster_ips = new_ips;
        }
        return Ok(());
    }
    if configured.len() < 2 {
        if policy == Policy::Require {
            return Err(vec![invalid(
                "spec.ipFamilyPolicy".to_owned(),
                BadValue::Str("RequireDualStack".to_owned()),
                "this cluster is not configured for dual-stack services".to_owned(),
            )]);
        }
        if carry {
            plan.cluster_ips = new_ips;
        }
        return Ok(());
    }
    let primary = IpFamily::of(parsed[0]);
    let secondary = new_families.get(1).copied().unwrap_or(primary.other());
    if secondary == primary || parsed.get(1).is_some_and(|ip| IpFamily::of(*ip) != secondary) {
        plan.passthrough = Some("secondary family mismatch");
        return Ok(());
    }
    if !configured.contains(&secondary) {
        return Err(vec![invalid(
            "spec.ipFamilies[1]".to_owned(),
            BadValue::Str(secondary.as_str().to_owned()),
            "not configured on this cluster".to_owned(),
        )]);
    }
    let requested = new_ips.get(1).cloned();
    plan.cluster_ips = vec![new_ips[0].clone(), requested.clone().unwrap_or_default()];
    plan.ip_claims.push(IpClaim {
        family: secondary,
        index: 1,
        want: parsed.get(1).map_or(Want::Next, |ip| Want::Value(*ip)),
        requested,
    });
    Ok(())
}

fn parse_all(ips: &[String]) -> Vec<IpAddr> {
    ips.iter().filter_map(|s| parse_service_ip(s).ok()).collect()
}

/// Where a service port's node port comes from while planning a CREATE.
#[derive(Debug, Clone, Copy)]
enum Source {
    Known(i32),
    Claim(usize),
}

/// Node ports on CREATE: upstream's `initNodePorts`, then the health-check port.
fn plan_create_ports(plan: &mut ServicePlan, spec: &ServiceSpec) {
    if needs_node_ports(spec) {
        let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();
        let should = should_allocate_node_ports(spec);
        // The node port the first port of each service port number asks for, in one pass (a
        // search per port would make a Service of many ports quadratic).
        let mut first_requested: HashMap<i32, i32> = HashMap::new();
        for q in ports {
            if node_port(q) != 0 {
                first_requested.entry(q.port).or_insert(node_port(q));
            }
        }
        // Keyed by the service port number: TCP and UDP of one port share a node port.
        let mut by_service_port: HashMap<i32, Source> = HashMap::new();
        for (i, p) in ports.iter().enumerate() {
            let np = node_port(p);
            if np == 0 && !should {
                continue;
            }
            match by_service_port.get(&p.port).copied() {
                None => {
                    let requested = first_requested.get(&p.port).copied();
                    match requested {
                        Some(requested) => {
                            plan.port_claims.push(PortClaim {
                                want: Want::Value(requested),
                                request: Request::NodePort {
                                    index: i,
                                    node_port: requested,
                                },
                                patch_ports: Vec::new(),
                                patch_health_check: false,
                            });
                            if np == 0 {
                                plan.fixed_ports.push((i, requested));
                            }
                            by_service_port.insert(p.port, Source::Known(requested));
                        }
                        None => {
                            plan.port_claims.push(PortClaim {
                                want: Want::Next,
                                request: Request::NextNodePort,
                                patch_ports: vec![i],
                                patch_health_check: false,
                            });
                            by_service_port.insert(p.port, Source::Claim(plan.port_claims.len() - 1));
                        }
                    }
                }
                Some(Source::Claim(k)) if np == 0 => plan.port_claims[k].patch_ports.push(i),
                Some(Source::Known(shared)) if np == 0 => plan.fixed_ports.push((i, shared)),
                Some(Source::Known(shared)) if np == shared => {}
                Some(_) => plan.port_claims.push(PortClaim::requested(i, np)),
            }
        }
    }
    if needs_health_check(spec) {
        plan.port_claims.push(health_check_claim(spec));
    }
}

fn health_check_claim(spec: &ServiceSpec) -> PortClaim {
    match spec.health_check_node_port.unwrap_or(0) {
        0 => PortClaim {
            want: Want::Next,
            request: Request::NextHealthCheckNodePort,
            patch_ports: Vec::new(),
            patch_health_check: true,
        },
        hc => PortClaim {
            want: Want::Value(hc),
            request: Request::HealthCheckNodePort { node_port: hc },
            patch_ports: Vec::new(),
            patch_health_check: false,
        },
    }
}

/// Node ports on UPDATE: keep what the client left out (by port name), take new requests and
/// fill zeros (upstream's `patchAllocatedValues` + `updateNodePorts`), then the health-check
/// port transitions.
fn plan_update_ports(
    plan: &mut ServicePlan,
    new: &ServiceSpec,
    old: &ServiceSpec,
) -> Result<(), Vec<Refusal>> {
    let old_ports: &[ServicePort] = old.ports.as_deref().unwrap_or_default();
    let ports: &[ServicePort] = new.ports.as_deref().unwrap_or_default();
    // The node port of every new port once the omitted ones are filled from the old object.
    let mut node_ports: Vec<i32> = ports.iter().map(node_port).collect();
    let (old_needs, new_needs) = (needs_node_ports(old), needs_node_ports(new));
    if old_needs && new_needs {
        let used: HashSet<i32> = node_ports.iter().copied().filter(|p| *p != 0).collect();
        // The first old port of each name, in one pass (not a search per new port).
        let mut old_by_name: HashMap<&str, i32> = HashMap::new();
        for o in old_ports {
            old_by_name
                .entry(o.name.as_deref().unwrap_or_default())
                .or_insert(node_port(o));
        }
        for (i, p) in ports.iter().enumerate() {
            if node_ports[i] != 0 {
                continue;
            }
            let kept = old_by_name
                .get(p.name.as_deref().unwrap_or_default())
                .copied()
                .filter(|np| *np != 0 && !used.contains(np));
            // `used` stays the set of values the request itself names: two omitted ports of one
            // name pair (53/TCP and 53/UDP) both get the old value back, as upstream's
            // patchAllocatedValues does.
            if let Some(np) = kept {
                node_ports[i] = np;
                plan.fixed_ports.push((i, np));
            }
        }
    }
    let old_numbers: BTreeSet<i32> = old_ports.iter().map(node_port).filter(|p| *p != 0).collect();
    let mut new_numbers: BTreeSet<i32> = BTreeSet::new();
    if new_needs {
        let should = should_allocate_node_ports(new);
        let mut seen: HashSet<(&str, i32)> = HashSet::new();
        for (p, &np) in ports.iter().zip(&node_ports) {
            if np != 0 && !seen.insert((protocol(p), np)) {
                return Err(vec![Refusal::Internal(format!(
                    "duplicate nodePort: {{{} {np}}}",
                    protocol(p)
                ))]);
            }
        }
        let mut allocated: HashSet<i32> = HashSet::new();
        for (i, &np) in node_ports.iter().enumerate() {
            if np == 0 && !should {
                continue;
            }
            if np != 0 {
                new_numbers.insert(np);
                if !old_numbers.contains(&np) && allocated.insert(np) {
                    plan.port_claims.push(PortClaim::requested(i, np));
                }
            } else {
                plan.port_claims.push(PortClaim {
                    want: Want::Next,
                    request: Request::NextNodePort,
                    patch_ports: vec![i],
                    patch_health_check: false,
                });
            }
        }
    }
    let old_hc = old.health_check_node_port.unwrap_or(0);
    let mut new_hc = new.health_check_node_port.unwrap_or(0);
    match (needs_health_check(old), needs_health_check(new)) {
        (true, true) if new_hc == 0 && old_hc != 0 => {
            plan.fixed_health_check = Some(old_hc);
            new_hc = old_hc;
        }
        (false, true) => plan.port_claims.push(health_check_claim(new)),
        _ => {}
    }
    if needs_health_check(new) && new_hc != 0 {
        new_numbers.insert(new_hc);
    }
    let mut before: BTreeSet<i32> = old_numbers;
    if old_hc != 0 {
        before.insert(old_hc);
    }
    plan.released
        .extend(before.difference(&new_numbers).map(|p| Value::Port(*p)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_values_dedupe_tcp_and_udp() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.10", "clusterIPs": ["10.0.0.10"],
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100,
                "ports": [{"port": 53, "protocol": "TCP", "nodePort": 30053},
                          {"port": 53, "protocol": "UDP", "nodePort": 30053}]}
        }))
        .expect("fixture");
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(
            held_values(spec),
            vec![
                Value::Ip("10.0.0.10".parse().expect("ip")),
                Value::Port(30053),
                Value::Port(30100)
            ]
        );
    }

    fn node_port_service(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("many".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn port(port: i32, protocol: &str, node_port: Option<i32>) -> ServicePort {
        ServicePort {
            name: Some(format!("p{port}-{protocol}")),
            port,
            protocol: Some(protocol.into()),
            node_port,
            ..ServicePort::default()
        }
    }

    #[test]
    fn many_ports_are_planned_in_linear_time() {
        // 65,535 service port numbers, each for TCP and UDP: one claim per number, shared by the
        // two protocols; the second of each pair asks for the first's node port.
        let mut ports = Vec::new();
        for p in 1..=65_535 {
            ports.push(port(p, "TCP", None));
            ports.push(port(p, "UDP", (p % 2 == 0).then_some(30_000 + p % 2_000)));
        }
        let svc = node_port_service(ports);
        let started = std::time::Instant::now();
        let plan = plan_service(Operation::Create, Some(&svc), None, &[IpFamily::V4]).expect("plan");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(plan.port_claims.len(), 65_535);
        // An odd number: one next-free claim patched into both ports.
        assert_eq!(plan.port_claims[0].want, Want::Next);
        assert_eq!(plan.port_claims[0].patch_ports, vec![0, 1]);
        // An even number: the UDP port's request, the TCP port filled with it.
        assert_eq!(plan.port_claims[1].want, Want::Value(30_002));
        assert!(plan.fixed_ports.contains(&(2, 30_002)));

        // An update leaving every node port out keeps the old ones, found by name.
        let old_ports: Vec<ServicePort> = (1..=65_535).map(|p| port(p, "TCP", Some(p))).collect();
        let new_ports: Vec<ServicePort> = (1..=65_535).rev().map(|p| port(p, "TCP", None)).collect();
        let (old, new) = (node_port_service(old_ports), node_port_service(new_ports));
        let started = std::time::Instant::now();
        let plan = plan_service(Operation::Update, Some(&new), Some(&old), &[IpFamily::V4]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let plan = plan.expect("plan");
        assert_eq!(plan.fixed_ports.len(), 65_535);
        assert_eq!(plan.fixed_ports[0], (0, 65_535));
        assert!(plan.port_claims.is_empty(), "kept values are not claimed again");
    }

    #[test]
    fn a_port_requested_twice_in_one_request_is_refused_once() {
        let claims = vec![
            PortClaim::requested(0, 30_001),
            PortClaim::requested(1, 30_002),
            PortClaim::requested(2, 30_001),
        ];
        let plan = ServicePlan {
            port_claims: claims,
            ..ServicePlan::default()
        };
        let mut state = RangeState::new(PortAllocator::new("30000-32767".parse().expect("range")));
        let expires = Timestamp::now();
        let refusal = plan
            .execute_ports(&mut state, expires, 100)
            .expect_err("a duplicate");
        assert!(format!("{refusal:?}").contains("30001"), "{refusal:?}");
        assert!(state.pending().is_empty(), "nothing stays claimed");
    }

    #[test]
    fn patch_paths_are_json_pointers() {
        let plan = ServicePlan {
            cluster_ips: vec!["".into()],
            fixed_ports: vec![(1, 30001)],
            port_claims: vec![PortClaim {
                want: Want::Next,
                request: Request::NextNodePort,
                patch_ports: vec![0],
                patch_health_check: false,
            }],
            ..ServicePlan::default()
        };
        let patch = plan.patch(&Assignment {
            ips: vec![(0, "10.0.0.7".parse().expect("ip"))],
            ports: vec![30500],
        });
        assert_eq!(
            serde_json::to_value(&patch).expect("serializes"),
            serde_json::json!([
                {"op": "add", "path": "/spec/clusterIP", "value": "10.0.0.7"},
                {"op": "add", "path": "/spec/clusterIPs", "value": ["10.0.0.7"]},
                {"op": "add", "path": "/spec/ports/0/nodePort", "value": 30500},
                {"op": "add", "path": "/spec/ports/1/nodePort", "value": 30001},
            ])
        );
    }
}
