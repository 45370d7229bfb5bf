//! Container port rules of a pod spec (a Pod's `spec` or a workload's pod template).
//!
//! Upstream's rules, with its messages: port names are IANA service names, unique within their
//! container; `containerPort` required and in range; `hostPort` in range and unique per
//! `(protocol, hostIP)` across the containers (each init container on its own, since they run one at
//! a time); `containerPort == hostPort` under `hostNetwork`; ephemeral containers may not declare
//! ports, probes or lifecycle handlers; probe and lifecycle ports are numbers or IANA names.
//!
//! Portico's rules, which upstream leaves to run time:
//! * a port name is unique across the whole pod, containers and init containers alike: a Service
//!   `targetPort` resolves a name in the first container that declares it, so a second declaration
//!   elsewhere is at best dead and at worst a silent misroute;
//! * a named `httpGet`/`tcpSocket` port of a probe or lifecycle handler is declared by the same
//!   container: the kubelet resolves it there only, and otherwise fails the probe at run time (a
//!   liveness probe then restarts the container forever, a readiness probe keeps the pod unready).
//!   The message names up to [`NAMED_CONTAINERS`] other containers that declare it.
//!
//! Cost: one pass over the containers and their ports, with one hash map of the valid port names
//! (inline keys: a valid name is at most 15 ASCII bytes) and one set of the host ports; from a
//! review, containers and ports are read one by one off the body (`check_pod_spec`). Only when
//! a kept error names a port another container declares is the list read a second time, for the
//! names of those containers.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Lifecycle, Pod, PodSpec, Probe};
use portico_allocators::field::{BadValue, FieldError, go_quote};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Options;
use super::findings::{Findings, bad_str};
use super::hashed::NameTable;
use super::json::{self, Checked, IntOrStr, Obj, Text};
use super::names::{
    PORT_NAME_MAX_LEN, PORT_NUM_RANGE, PortRef, check_port_num_or_name, is_valid_port_name, port_num_ok,
};
use super::service::check_protocol;
use super::workload::DecodeError;

/// Most other containers a probe-port message names (then `and N more`).
pub const NAMED_CONTAINERS: usize = 5;

/// Which list a container is in and where: the index, with the top bit for `initContainers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Slot(u32);

impl Slot {
    const INIT: u32 = 1 << 31;

    fn new(init: bool, index: usize) -> Self {
        let index = u32::try_from(index).unwrap_or(u32::MAX) & !Self::INIT;
        Slot(if init { index | Self::INIT } else { index })
    }

    fn init(self) -> bool {
        self.0 & Self::INIT != 0
    }

    fn index(self) -> u32 {
        self.0 & !Self::INIT
    }

    fn list(self) -> &'static str {
        if self.init() {
            "initContainers"
        } else {
            "containers"
        }
    }
}

/// A valid port name (an IANA service name: at most 15 ASCII bytes), stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PortName([u8; 16]);

impl PortName {
    fn new(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() > 15 {
            return None;
        }
        let mut key = [0u8; 16];
        key[..b.len()].copy_from_slice(b);
        key[15] = b.len() as u8;
        Some(PortName(key))
    }
}

/// Where a valid port name was declared first, and the last container that declared it.
struct Declared {
    first: Slot,
    first_port: u32,
    last: Slot,
}

/// One container port as the rules see it.
struct PortView<'a> {
    name: Option<Cow<'a, str>>,
    container_port: i32,
    host_port: i32,
    protocol: Option<Cow<'a, str>>,
    host_ip: Option<Cow<'a, str>>,
}

impl<'a> PortView<'a> {
    fn of(p: &'a ContainerPort) -> Self {
        PortView {
            name: p.name.as_deref().map(Cow::Borrowed),
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            protocol: p.protocol.as_deref().map(Cow::Borrowed),
            host_ip: p.host_ip.as_deref().map(Cow::Borrowed),
        }
    }
}

/// The port references of one probe or lifecycle handler.
#[derive(Default, Clone, Copy)]
struct HandlerView<'p> {
    http_get: Option<PortRef<'p>>,
    tcp_socket: Option<PortRef<'p>>,
    grpc: Option<i32>,
}

/// The handlers of a container, in upstream's order.
#[derive(Default)]
struct HandlersView<'p> {
    post_start: Option<HandlerView<'p>>,
    pre_stop: Option<HandlerView<'p>>,
    liveness: Option<HandlerView<'p>>,
    readiness: Option<HandlerView<'p>>,
    startup: Option<HandlerView<'p>>,
}

impl<'p> HandlersView<'p> {
    fn of(c: &'p Container) -> Self {
        let probe = |p: &'p Option<Probe>| {
            p.as_ref().map(|p| HandlerView {
                http_get: p.http_get.as_ref().map(|a| PortRef::of(&a.port)),
                tcp_socket: p.tcp_socket.as_ref().map(|a| PortRef::of(&a.port)),
                grpc: p.grpc.as_ref().map(|g| g.port),
            })
        };
        let (post_start, pre_stop) = match &c.lifecycle {
            Some(Lifecycle {
                post_start, pre_stop, ..
            }) => {
                let handler = |h: &'p Option<k8s_openapi::api::core::v1::LifecycleHandler>| {
                    h.as_ref().map(|h| HandlerView {
                        http_get: h.http_get.as_ref().map(|a| PortRef::of(&a.port)),
                        tcp_socket: h.tcp_socket.as_ref().map(|a| PortRef::of(&a.port)),
                        grpc: None,
                    })
                };
                (handler(post_start), handler(pre_stop))
            }
            None => (None, None),
        };
        HandlersView {
            post_start,
            pre_stop,
            liveness: probe(&c.liveness_probe),
            readiness: probe(&c.readiness_probe),
            startup: probe(&c.startup_probe),
        }
    }
}

/// The field path of a container (`spec.containers[3]`), rendered only for errors kept.
#[derive(Clone, Copy)]
struct ContainerPath<'o> {
    spec: &'o str,
    slot: Slot,
}

impl std::fmt::Display for ContainerPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}[{}]", self.spec, self.slot.list(), self.slot.index())
    }
}

/// A probe-port error whose detail waits for the names of the other containers declaring it.
struct Pending {
    init_phase: bool,
    kept: usize,
    name: PortName,
    own: Slot,
}

/// The pod-wide state and per-phase findings of one pod spec.
struct PodRules<'a, 'o, 'k> {
    opts: &'o Options,
    path: &'o str,
    host_network: bool,
    /// The valid port names declared so far (read from `text`).
    names: NameTable<'a, Declared>,
    first_declarers: HashMap<Slot, Cow<'a, str>>,
    host_ports: HashSet<(Cow<'a, str>, Cow<'a, str>, i32)>,
    current: Slot,
    current_name: Cow<'a, str>,
    current_path: ContainerPath<'o>,
    /// Whether the current container declared a name first (it is then in `first_declarers`).
    current_declares: bool,
    containers: Findings<'k>,
    container_conflicts: Findings<'k>,
    init: Findings<'k>,
    init_conflicts: Findings<'k>,
    ephemeral: Findings<'k>,
    host_network_ports: Findings<'k>,
    pending: Vec<Pending>,
}

impl<'a, 'o, 'k> PodRules<'a, 'o, 'k> {
    /// The rules of a pod spec at `path` whose port names are read from `text`.
    fn new(path: &'o str, host_network: bool, opts: &'o Options, sink: &Findings<'k>, text: &'a str) -> Self {
        PodRules {
            opts,
            path,
            host_network,
            names: NameTable::new(text),
            first_declarers: HashMap::new(),
            host_ports: HashSet::new(),
            current: Slot::new(false, 0),
            current_name: Cow::Borrowed(""),
            current_declares: false,
            current_path: ContainerPath {
                spec: path,
                slot: Slot::new(false, 0),
            },
            containers: sink.fork(),
            container_conflicts: sink.fork(),
            init: sink.fork(),
            init_conflicts: sink.fork(),
            ephemeral: sink.fork(),
            host_network_ports: sink.fork(),
            pending: Vec::new(),
        }
    }

    fn begin_container(&mut self, init: bool, index: usize, name: Cow<'a, str>) {
        self.current = Slot::new(init, index);
        self.current_name = name;
        self.current_declares = false;
        self.current_path = ContainerPath {
            spec: self.path,
            slot: self.current,
        };
        if init {
            // Each init container runs on its own: host ports only conflict within one.
            self.host_ports.clear();
        }
    }

    fn port(&mut self, j: usize, p: PortView<'a>) {
        let slot = self.current;
        let (cpath, opts) = (self.current_path, self.opts);
        let ppath = || format!("{cpath}.ports[{j}]");
        let sink = if slot.init() {
            &mut self.init
        } else {
            &mut self.containers
        };
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = is_valid_port_name(name, opts);
            if !msgs.is_empty() {
                for msg in msgs {
                    sink.report(|| FieldError::invalid(format!("{}.name", ppath()), bad_str(name), msg));
                }
            } else if name.len() <= PORT_NAME_MAX_LEN {
                let declared = || Declared {
                    first: slot,
                    first_port: u32::try_from(j).unwrap_or(u32::MAX),
                    last: slot,
                };
                match self.names.get_or_insert_with(name, declared) {
                    (_, true) => {
                        if !self.current_declares {
                            self.current_declares = true;
                            self.first_declarers
                                .entry(slot)
                                .or_insert_with(|| self.current_name.clone());
                        }
                    }
                    // Upstream: duplicates within one container (only valid names are compared).
                    (d, false) if d.last == slot => {
                        sink.report(|| FieldError::duplicate(format!("{}.name", ppath()), bad_str(name)));
                    }
                    // Portico: duplicates across containers.
                    (d, false) => {
                        d.last = slot;
                        let (first, first_port) = (d.first, d.first_port);
                        let path = self.path;
                        let container = self
                            .first_declarers
                            .get(&first)
                            .map(|c| c.as_ref())
                            .unwrap_or_default();
                        sink.report(|| {
                            FieldError::invalid(
                                format!("{}.name", ppath()),
                                bad_str(name),
                                format!(
                                    "must be unique within the pod: already declared by container {} at \
                                     {path}.{}[{}].ports[{first_port}]",
                                    quote(container),
                                    first.list(),
                                    first.index()
                                ),
                            )
                        });
                    }
                }
            }
        }

        if p.container_port == 0 {
            sink.report(|| FieldError::required(format!("{}.containerPort", ppath()), ""));
        } else {
            if !port_num_ok(i64::from(p.container_port)) {
                sink.report(|| {
                    FieldError::invalid(
                        format!("{}.containerPort", ppath()),
                        BadValue::Int(i64::from(p.container_port)),
                        PORT_NUM_RANGE,
                    )
                });
            }
        }

        if p.host_port != 0 && !port_num_ok(i64::from(p.host_port)) {
            sink.report(|| {
                FieldError::invalid(
                    format!("{}.hostPort", ppath()),
                    BadValue::Int(i64::from(p.host_port)),
                    PORT_NUM_RANGE,
                )
            });
        }

        if let Some(protocol) = &p.protocol {
            check_protocol(protocol, || format!("{}.protocol", ppath()), sink);
        }

        // Upstream's hostPort conflict check: `(protocol, hostIP, hostPort)` unique among the
        // containers (each init container on its own), reported after the list's own errors.
        if p.host_port != 0 {
            let protocol = p.protocol.clone().unwrap_or(Cow::Borrowed("TCP"));
            let ip = p.host_ip.clone().unwrap_or(Cow::Borrowed(""));
            let key = (protocol, ip, p.host_port);
            if self.host_ports.contains(&key) {
                let conflicts = if slot.init() {
                    &mut self.init_conflicts
                } else {
                    &mut self.container_conflicts
                };
                conflicts.report(|| {
                    FieldError::duplicate(
                        format!("{}.hostPort", ppath()),
                        bad_str(&format!("{}/{}/{}", key.0, key.1, key.2)),
                    )
                });
            } else {
                self.host_ports.insert(key);
            }
        }

        // Upstream checks regular containers only. A hostPort left at 0 is the one the apiserver
        // defaults to containerPort (or, for templates in newer releases, leaves unset): not an
        // error.
        if self.host_network && !slot.init() && p.host_port != 0 && p.host_port != p.container_port {
            self.host_network_ports.report(|| {
                FieldError::invalid(
                    format!("{}.containerPort", ppath()),
                    BadValue::Int(i64::from(p.container_port)),
                    "must match `hostPort` when `hostNetwork` is true",
                )
            });
        }
    }

    /// The port references of the current container's handlers, after its ports.
    fn handlers(&mut self, h: &HandlersView<'_>) {
        if h.post_start.is_none()
            && h.pre_stop.is_none()
            && h.liveness.is_none()
            && h.readiness.is_none()
            && h.startup.is_none()
        {
            return;
        }
        let hooks = [
            ("lifecycle.postStart", h.post_start),
            ("lifecycle.preStop", h.pre_stop),
        ];
        let probes = [
            ("livenessProbe", h.liveness),
            ("readinessProbe", h.readiness),
            ("startupProbe", h.startup),
        ];
        for (field, handler) in hooks.into_iter().chain(probes) {
            let Some(handler) = handler else { continue };
            if let Some(port) = handler.http_get {
                self.port_reference(port, field, "httpGet.port");
            }
            if let Some(port) = handler.tcp_socket {
                self.port_reference(port, field, "tcpSocket.port");
            }
            if let Some(port) = handler.grpc {
                let cpath = self.current_path;
                if !port_num_ok(i64::from(port)) {
                    self.sink().report(|| {
                        FieldError::invalid(
                            format!("{cpath}.{field}.grpc.port"),
                            BadValue::Int(i64::from(port)),
                            PORT_NUM_RANGE,
                        )
                    });
                }
            }
        }
    }

    fn sink(&mut self) -> &mut Findings<'k> {
        if self.current.init() {
            &mut self.init
        } else {
            &mut self.containers
        }
    }

    /// Upstream's syntax check of a handler port, then, for a well-formed name, Portico's check
    /// that the same container declares it (a malformed name already has its error; resolving it
    /// would only add noise).
    fn port_reference(&mut self, port: PortRef<'_>, handler: &str, action: &str) {
        let valid = match port {
            PortRef::Int(n) => port_num_ok(i64::from(n)),
            PortRef::Str(s) => is_valid_port_name(s, self.opts).is_empty(),
        };
        let opts = self.opts;
        let slot = self.current;
        let cpath = self.current_path;
        let field = || format!("{cpath}.{handler}.{action}");
        if !valid {
            let sink = self.sink();
            check_port_num_or_name(port, field, opts, sink);
            return;
        }
        let PortRef::Str(name) = port else { return };
        let Some(key) = PortName::new(name) else { return };
        if self.names.get(name).is_some_and(|d| d.last == slot) {
            return;
        }
        let container = self.current_name.clone();
        let detail = || {
            format!(
                "no port named {} is declared by container {}",
                go_quote(name),
                quote(&container)
            )
        };
        let init_phase = slot.init();
        let sink = self.sink();
        let before = sink.kept().len();
        sink.report(|| FieldError::invalid(field(), bad_str(name), detail()));
        if sink.kept().len() > before {
            self.pending.push(Pending {
                init_phase,
                kept: before,
                name: key,
                own: slot,
            });
        }
    }

    /// Names, for the pending probe-port errors, the other containers declaring the port: the
    /// usual mistake is a probe in one container naming a port of another (upstream admits it, the
    /// kubelet then fails with "port ... not found"). `declarations` calls its argument for every
    /// declared port name of the containers and init containers, in order.
    fn resolve(
        &mut self,
        declarations: impl FnOnce(&mut dyn FnMut(Slot, &str, &str)) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<PortName> = self.pending.iter().map(|p| p.name).collect();
        // Per name: the first few declaring containers (slot, name) and how many there are.
        let mut found: HashMap<PortName, (Vec<(Slot, String)>, usize)> = HashMap::new();
        let mut last: Option<(Slot, PortName)> = None;
        declarations(&mut |slot, container, port| {
            let Some(key) = PortName::new(port).filter(|k| wanted.contains(k)) else {
                return;
            };
            // A container counts once, however many times it declares the name.
            let entry = found.entry(key).or_default();
            if entry.0.iter().any(|(s, _)| *s == slot) || last == Some((slot, key)) {
                return;
            }
            last = Some((slot, key));
            entry.1 += 1;
            if entry.0.len() <= NAMED_CONTAINERS {
                entry.0.push((slot, container.to_owned()));
            }
        })?;
        for p in std::mem::take(&mut self.pending) {
            let Some((declarers, total)) = found.get(&p.name) else {
                continue;
            };
            let own = usize::from(declarers.iter().any(|(s, _)| *s == p.own));
            let others: Vec<String> = declarers
                .iter()
                .filter(|(s, _)| *s != p.own)
                .take(NAMED_CONTAINERS)
                .map(|(_, name)| quote(name))
                .collect();
            if others.is_empty() {
                continue;
            }
            let unnamed = total - own - others.len();
            let (noun, verb) = if others.len() + unnamed == 1 {
                ("container", "declares")
            } else {
                ("containers", "declare")
            };
            let mut list = others.join(", ");
            if unnamed > 0 {
                list.push_str(&format!(" and {unnamed} more"));
            }
            let sink = if p.init_phase {
                &mut self.init
            } else {
                &mut self.containers
            };
            if let Some(e) = sink.kept_mut().get_mut(p.kept) {
                e.detail.push_str(&format!(
                    " ({noun} {list} {verb} it, but named ports resolve only within their own container)"
                ));
            }
        }
        Ok(())
    }

    fn ephemeral(&mut self, i: usize, set: [(&str, bool); 5]) {
        let path = self.path;
        for (field, _) in set.iter().filter(|(_, is_set)| *is_set) {
            self.ephemeral.report(|| {
                FieldError::forbidden(
                    format!("{path}.ephemeralContainers[{i}].{field}"),
                    "cannot be set for an Ephemeral Container",
                )
            });
        }
    }

    /// Appends everything to `sink` in upstream's order: the containers, the hostPort conflicts
    /// among them, the same for `initContainers`, then `ephemeralContainers`, then `hostNetwork`.
    fn finish(self, sink: &mut Findings<'k>) {
        sink.join(self.containers);
        sink.join(self.container_conflicts);
        sink.join(self.init);
        sink.join(self.init_conflicts);
        sink.join(self.ephemeral);
        sink.join(self.host_network_ports);
    }
}

/// A container name quoted for a message, bounded.
fn quote(s: &str) -> String {
    match bad_str(s) {
        BadValue::Raw(cut) => cut,
        _ => go_quote(s),
    }
}

/// Validates the ports of a pod spec and the port references of its probes and lifecycle handlers.
///
/// `path` is the field path of the spec: `"spec"` for a Pod, `"spec.template.spec"` for Deployments,
/// StatefulSets, DaemonSets, ReplicaSets and Jobs, `"spec.jobTemplate.spec.template.spec"` for
/// CronJobs (see [`super::pod_spec_path`]).
///
/// Order: each container of `containers` (ports, then `lifecycle.postStart`, `lifecycle.preStop`,
/// `livenessProbe`, `readinessProbe`, `startupProbe`), the hostPort conflicts among them, the same for
/// `initContainers`, then `ephemeralContainers`, then the `hostNetwork` check, as upstream orders them.
pub fn validate_pod_spec_ports(spec: &PodSpec, path: &str, opts: &Options) -> Vec<FieldError> {
    let mut sink = Findings::all();
    let mut rules = PodRules::new(path, spec.host_network == Some(true), opts, &sink, "");
    let init: &[Container] = spec.init_containers.as_deref().unwrap_or_default();
    let lists = [(false, spec.containers.as_slice()), (true, init)];
    for (is_init, list) in lists {
        for (i, c) in list.iter().enumerate() {
            rules.begin_container(is_init, i, Cow::Borrowed(&c.name));
            for (j, p) in c.ports.iter().flatten().enumerate() {
                rules.port(j, PortView::of(p));
            }
            rules.handlers(&HandlersView::of(c));
        }
    }
    for (i, e) in spec.ephemeral_containers.iter().flatten().enumerate() {
        // Ephemeral containers are for debugging and must not carry pod services; upstream forbids
        // these fields (an empty list counts as unset here, which is the lenient reading).
        rules.ephemeral(
            i,
            [
                ("ports", e.ports.as_ref().is_some_and(|p| !p.is_empty())),
                ("livenessProbe", e.liveness_probe.is_some()),
                ("readinessProbe", e.readiness_probe.is_some()),
                ("startupProbe", e.startup_probe.is_some()),
                ("lifecycle", e.lifecycle.is_some()),
            ],
        );
    }
    let resolved = rules.resolve(|each| {
        for (is_init, list) in lists {
            for (i, c) in list.iter().enumerate() {
                for p in c.ports.iter().flatten() {
                    if let Some(name) = p.name.as_deref() {
                        each(Slot::new(is_init, i), &c.name, name);
                    }
                }
            }
        }
        Ok(())
    });
    debug_assert!(resolved.is_ok());
    rules.finish(&mut sink);
    sink.into_vec()
}

/// Validates the ports of a Pod (paths under `spec.`). A Pod without a spec has no ports to check.
pub fn validate_pod(pod: &Pod, opts: &Options) -> Vec<FieldError> {
    pod.spec
        .as_ref()
        .map(|spec| validate_pod_spec_ports(spec, "spec", opts))
        .unwrap_or_default()
}

/// What the rules read of a pod spec in a review; the lists stay raw and are read one by one.
#[derive(Deserialize, Default)]
#[serde(default, expecting = "PodSpec")]
struct PodSpecDoc<'a> {
    #[serde(borrow)]
    containers: Option<&'a RawValue>,
    #[serde(rename = "initContainers", borrow)]
    init_containers: Option<&'a RawValue>,
    #[serde(rename = "ephemeralContainers", borrow)]
    ephemeral_containers: Option<&'a RawValue>,
    #[serde(rename = "hostNetwork")]
    host_network: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "Container")]
struct ContainerDoc<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    ports: Option<&'a RawValue>,
    // Checked where they stand, decoded where used: a container rarely has them, and a list
    // of a million containers moves each one a few times on its way.
    #[serde(borrow)]
    lifecycle: Option<Checked<'a, Obj<LifecycleDoc<'a>>>>,
    #[serde(rename = "livenessProbe", borrow)]
    liveness_probe: Option<Checked<'a, Obj<HandlerDoc<'a>>>>,
    #[serde(rename = "readinessProbe", borrow)]
    readiness_probe: Option<Checked<'a, Obj<HandlerDoc<'a>>>>,
    #[serde(rename = "startupProbe", borrow)]
    startup_probe: Option<Checked<'a, Obj<HandlerDoc<'a>>>>,
}

impl json::Document for ContainerDoc<'_> {}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "Lifecycle")]
struct LifecycleDoc<'a> {
    #[serde(rename = "postStart", borrow)]
    post_start: Option<Obj<HandlerDoc<'a>>>,
    #[serde(rename = "preStop", borrow)]
    pre_stop: Option<Obj<HandlerDoc<'a>>>,
}

/// A probe or a lifecycle handler (a handler has no `grpc`).
#[derive(Deserialize, Default)]
#[serde(default, expecting = "Probe")]
struct HandlerDoc<'a> {
    #[serde(rename = "httpGet", borrow)]
    http_get: Option<Obj<ActionDoc<'a>>>,
    #[serde(rename = "tcpSocket", borrow)]
    tcp_socket: Option<Obj<ActionDoc<'a>>>,
    grpc: Option<Obj<GrpcDoc>>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "HTTPGetAction")]
struct ActionDoc<'a> {
    #[serde(borrow)]
    port: Option<IntOrStr<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "GRPCAction")]
struct GrpcDoc {
    port: Option<i32>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "ContainerPort")]
struct ContainerPortDoc<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(rename = "containerPort")]
    container_port: Option<i32>,
    #[serde(rename = "hostPort")]
    host_port: Option<i32>,
    #[serde(borrow)]
    protocol: Option<Text<'a>>,
    #[serde(rename = "hostIP", borrow)]
    host_ip: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "EphemeralContainer")]
struct EphemeralDoc<'a> {
    #[serde(borrow)]
    ports: Option<&'a RawValue>,
    #[serde(rename = "livenessProbe", borrow)]
    liveness_probe: Option<&'a RawValue>,
    #[serde(rename = "readinessProbe", borrow)]
    readiness_probe: Option<&'a RawValue>,
    #[serde(rename = "startupProbe", borrow)]
    startup_probe: Option<&'a RawValue>,
    #[serde(borrow)]
    lifecycle: Option<&'a RawValue>,
}

/// The names a resolution pass reads of a container.
#[derive(Deserialize, Default)]
#[serde(default, expecting = "Container")]
struct NamesDoc<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    ports: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "ContainerPort")]
struct PortNameDoc<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
}

fn handler_view<'p>(h: &'p HandlerDoc<'_>) -> HandlerView<'p> {
    let port = |a: &'p Obj<ActionDoc<'_>>| match &a.port {
        Some(p) => PortRef::of_doc(p),
        None => PortRef::Int(0),
    };
    HandlerView {
        http_get: h.http_get.as_ref().map(port),
        tcp_socket: h.tcp_socket.as_ref().map(port),
        grpc: h.grpc.as_ref().map(|g| g.port.unwrap_or(0)),
    }
}

/// Validates the pod spec of a review (`spec` raw, field paths under `path`) into `sink`, reading
/// containers and ports one by one off the body.
pub(crate) fn check_pod_spec(
    spec: &RawValue,
    path: &str,
    opts: &Options,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let Obj(doc) = json::decode::<Obj<PodSpecDoc<'_>>>(spec).map_err(|e| DecodeError::new(path, &e))?;
    check_pod_spec_doc(&doc, spec.get(), path, opts, sink)
}

/// A Pod of a review, read in one pass: `kind` and `metadata` raw, `spec` decoded (its lists
/// left raw), where reading the members one by one and then the spec would walk the spec
/// twice. A Pod this pass refuses (a repeated member, an undecodable spec) is read member by
/// member, as any workload ([`super::workload::check_workload_spec`]), which says why.
#[derive(Deserialize, Default)]
#[serde(default, expecting = "Pod")]
pub(crate) struct PodObject<'a> {
    /// `kind`, raw.
    #[serde(borrow)]
    pub kind: Option<&'a RawValue>,
    /// `metadata`, raw.
    #[serde(borrow)]
    pub metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    spec: Option<Obj<PodSpecDoc<'a>>>,
    /// The object's text.
    #[serde(skip)]
    text: &'a str,
}

impl<'a> PodObject<'a> {
    /// Reads a Pod (`None`: see the type's docs).
    pub(crate) fn read(object: &'a RawValue) -> Option<Self> {
        let Obj(pod) = json::decode::<Obj<PodObject<'a>>>(object).ok()?;
        Some(PodObject {
            text: object.get(),
            ..pod
        })
    }

    /// The errors of its pod spec ([`check_pod_spec`] at `spec`).
    pub(crate) fn check(&self, opts: &Options, sink: &mut Findings<'_>) -> Result<(), DecodeError> {
        match &self.spec {
            Some(spec) => check_pod_spec_doc(spec, self.text, "spec", opts, sink),
            None => Ok(()),
        }
    }
}

/// [`check_pod_spec`] of a decoded spec, read from `text`.
fn check_pod_spec_doc<'a>(
    doc: &PodSpecDoc<'a>,
    text: &'a str,
    path: &str,
    opts: &Options,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let fail = |e: serde_json::Error| DecodeError::new(path, &e);
    let mut rules = PodRules::new(path, doc.host_network == Some(true), opts, sink, text);
    let lists = [(false, doc.containers), (true, doc.init_containers)];
    for (is_init, list) in lists {
        let Some(list) = list else { continue };
        json::try_for_each_document::<ContainerDoc<'_>, _>(list, |i, Obj(c)| {
            // A container with neither ports nor handlers has nothing to check, not even a
            // place to remember (a list of a million `{}` is a million of them).
            let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
            if c.ports.is_none() && c.lifecycle.is_none() && probes.iter().all(|p| p.is_none()) {
                return Ok(());
            }
            let lifecycle = c.lifecycle.as_ref().and_then(Checked::get);
            let probes = probes.map(|p| p.as_ref().and_then(Checked::get));
            rules.begin_container(is_init, i, c.name.map(|n| n.0).unwrap_or_default());
            if let Some(ports) = c.ports {
                json::for_each::<Obj<ContainerPortDoc<'_>>, _>(ports, |j, Obj(p)| {
                    rules.port(
                        j,
                        PortView {
                            name: p.name.map(|n| n.0),
                            container_port: p.container_port.unwrap_or(0),
                            host_port: p.host_port.unwrap_or(0),
                            protocol: p.protocol.map(|n| n.0),
                            host_ip: p.host_ip.map(|n| n.0),
                        },
                    );
                })?;
            }
            let (post_start, pre_stop) = match &lifecycle {
                Some(l) => (
                    l.post_start.as_ref().map(|h| HandlerView {
                        grpc: None,
                        ..handler_view(h)
                    }),
                    l.pre_stop.as_ref().map(|h| HandlerView {
                        grpc: None,
                        ..handler_view(h)
                    }),
                ),
                None => (None, None),
            };
            let [liveness, readiness, startup] = &probes;
            rules.handlers(&HandlersView {
                post_start,
                pre_stop,
                liveness: liveness.as_ref().map(|h| handler_view(h)),
                readiness: readiness.as_ref().map(|h| handler_view(h)),
                startup: startup.as_ref().map(|h| handler_view(h)),
            });
            Ok(())
        })
        .map_err(fail)?;
    }
    if let Some(list) = doc.ephemeral_containers {
        json::try_for_each::<Obj<EphemeralDoc<'_>>, _>(list, |i, Obj(e)| {
            let set = |v: Option<&RawValue>| v.is_some_and(|v| !json::is_null(v));
            let ports = match e.ports {
                Some(p) => json::count(p)? > 0,
                None => false,
            };
            rules.ephemeral(
                i,
                [
                    ("ports", ports),
                    ("livenessProbe", set(e.liveness_probe)),
                    ("readinessProbe", set(e.readiness_probe)),
                    ("startupProbe", set(e.startup_probe)),
                    ("lifecycle", set(e.lifecycle)),
                ],
            );
            Ok(())
        })
        .map_err(fail)?;
    }
    rules.resolve(|each| {
        for (is_init, list) in lists {
            let Some(list) = list else { continue };
            json::try_for_each::<Obj<NamesDoc<'_>>, _>(list, |i, Obj(c)| {
                let container = c.name.as_deref().unwrap_or_default();
                if let Some(ports) = c.ports {
                    json::for_each::<Obj<PortNameDoc<'_>>, _>(ports, |_, Obj(p)| {
                        if let Some(name) = p.name.as_deref() {
                            each(Slot::new(is_init, i), container, name);
                        }
                    })?;
                }
                Ok(())
            })
            .map_err(fail)?;
        }
        Ok(())
    })?;
    rules.finish(sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        EphemeralContainer, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, SleepAction,
        TCPSocketAction,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    fn cport(name: &str, port: i32) -> ContainerPort {
        ContainerPort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }
    }

    fn container(name: &str, ports: Vec<ContainerPort>) -> Container {
        Container {
            name: name.into(),
            ports: Some(ports),
            ..Container::default()
        }
    }

    fn pod(containers: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            ..PodSpec::default()
        }
    }

    fn msgs(spec: &PodSpec) -> Vec<String> {
        validate_pod_spec_ports(spec, "spec", &Options::default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn http_probe(port: IntOrString) -> Option<Probe> {
        Some(Probe {
            http_get: Some(HTTPGetAction {
                port,
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        })
    }

    const CHARSET: &str = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
    const LETTER: &str = "must contain at least one letter or number (a-z, 0-9)";

    /// A container as it was read before its handlers were kept raw: the oracle of
    /// `handlers_fail_where_they_stand`.
    #[derive(Deserialize, Default)]
    #[serde(default, expecting = "Container")]
    #[allow(dead_code)]
    struct ContainerBoxed<'a> {
        #[serde(borrow)]
        name: Option<Text<'a>>,
        #[serde(borrow)]
        ports: Option<&'a RawValue>,
        #[serde(borrow)]
        lifecycle: Option<Box<Obj<LifecycleDoc<'a>>>>,
        #[serde(rename = "livenessProbe", borrow)]
        liveness_probe: Option<Box<Obj<HandlerDoc<'a>>>>,
        #[serde(rename = "readinessProbe", borrow)]
        readiness_probe: Option<Box<Obj<HandlerDoc<'a>>>>,
        #[serde(rename = "startupProbe", borrow)]
        startup_probe: Option<Box<Obj<HandlerDoc<'a>>>>,
    }

    #[test]
    fn handlers_fail_where_they_stand() {
        for c in [
            r#"{"livenessProbe": {"httpGet": {"port": 1.5}}, "name": 7}"#,
            r#"{"name": 7, "livenessProbe": {"httpGet": {"port": 1.5}}}"#,
            r#"{"readinessProbe": {"grpc": {"port": "x"}}, "startupProbe": [1]}"#,
            r#"{"startupProbe": [1], "readinessProbe": {"grpc": {"port": "x"}}}"#,
            r#"{"lifecycle": {"preStop": {"tcpSocket": {"port": 4294967296}}}, "livenessProbe": 7}"#,
            r#"{"lifecycle": {"postStart": {}, "postStart": {}}}"#,
            r#"{"livenessProbe": null, "lifecycle": null, "ports": null}"#,
            r#"{"livenessProbe": {"httpGet": {"port": "http"}}, "livenessProbe": {}}"#,
            r#"{"lifecycle": {"preStop": {"httpGet": {"port": "\ud800"}}}}"#,
        ] {
            let raw: &RawValue = serde_json::from_str(c).unwrap();
            let now = json::decode::<Obj<ContainerDoc<'_>>>(raw)
                .map(|_| ())
                .map_err(|e| json::message(&e));
            let before = json::decode::<Obj<ContainerBoxed<'_>>>(raw)
                .map(|_| ())
                .map_err(|e| json::message(&e));
            assert_eq!(now, before, "{c}");
        }
    }

    #[test]
    fn a_pod_read_in_one_pass_reads_as_member_by_member() {
        let opts = Options::default();
        for object in [
            r#"{"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 0}]}]}}"#,
            r#"{"spec": {"containers": [{}, {"ports": [{"name": "x", "containerPort": 1}, {"name": "x", "containerPort": 2}]}]}}"#,
            r#"{"spec": null, "kind": "Pod"}"#,
            r#"{"spec": {"containers": 7}}"#,
            r#"{"spec": {"hostNetwork": "yes", "containers": [{"ports": [{"containerPort": 0}]}]}}"#,
            r#"{"spec": {"containers": []}, "spec": {"containers": [{"ports": [{"containerPort": 0}]}]}}"#,
            r#"{"kind": "Pod", "kind": "Pod", "spec": {}}"#,
            r#"{"metadata": 7, "spec": []}"#,
            r#"{"\ud800": 1, "spec": {}}"#,
            r#"{"spec": {"initContainers": [{"ports": [{"hostPort": 1, "containerPort": 1}]}], "containers": [{"ports": [{"hostPort": 1, "containerPort": 2}]}], "hostNetwork": true}}"#,
        ] {
            let raw: &RawValue = serde_json::from_str(object).unwrap();
            let show = |r: Result<(), DecodeError>, sink: Findings<'_>| {
                r.map(|()| {
                    sink.into_vec()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                })
                .map_err(|e| format!("{}: {}", e.path, e.source))
            };
            let mut by_members = Findings::all();
            let spec = json::members(raw, ["spec"]).and_then(|[spec]| spec);
            let by_members = show(
                super::super::workload::check_workload_spec(
                    super::super::WorkloadKind::Pod,
                    spec,
                    &opts,
                    &mut by_members,
                ),
                by_members,
            );
            if let Some(pod) = PodObject::read(raw) {
                let mut sink = Findings::all();
                assert_eq!(show(pod.check(&opts, &mut sink), sink), by_members, "{object}");
                let head = json::members(raw, ["kind", "metadata"]).unwrap();
                assert_eq!(pod.kind.map(RawValue::get), head[0].map(RawValue::get));
                assert_eq!(pod.metadata.map(RawValue::get), head[1].map(RawValue::get));
            }
        }
    }

    #[test]
    fn names_written_with_escapes_are_the_same_names() {
        let raw: &RawValue = serde_json::from_str(
            r#"{"containers": [{"name": "a", "ports": [{"name": "h\u0074tp", "containerPort": 1}]},
                               {"name": "b", "ports": [{"name": "http", "containerPort": 2}, {"name": "ht\u0074p", "containerPort": 3}]}],
                "initContainers": [{"name": "i", "ports": [{"name": "http", "containerPort": 4}]}]}"#,
        )
        .unwrap();
        let mut sink = Findings::all();
        check_pod_spec(raw, "spec", &Options::default(), &mut sink).unwrap();
        let got: Vec<String> = sink.into_vec().iter().map(ToString::to_string).collect();
        let across = |at: &str| {
            format!(
                r#"{at}.name: Invalid value: "http": must be unique within the pod: already declared by container "a" at spec.containers[0].ports[0]"#
            )
        };
        assert_eq!(
            got,
            [
                across("spec.containers[1].ports[0]"),
                r#"spec.containers[1].ports[1].name: Duplicate value: "http""#.to_owned(),
                across("spec.initContainers[0].ports[0]"),
            ]
        );
    }

    /// Each document names the Kubernetes type in its errors, as k8s-openapi's decoders do.
    #[test]
    fn documents_name_their_type() {
        fn named<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> String {
            match json::decode::<Obj<T>>(raw) {
                Ok(_) => "decoded".into(),
                Err(e) => json::message(&e),
            }
        }
        let list: &RawValue = serde_json::from_str("[1]").unwrap();
        let number: &RawValue = serde_json::from_str("7").unwrap();
        for (got, want) in [
            (named::<PodSpecDoc<'_>>(list), "PodSpec"),
            (named::<ContainerDoc<'_>>(list), "Container"),
            (named::<LifecycleDoc<'_>>(list), "Lifecycle"),
            (named::<HandlerDoc<'_>>(list), "Probe"),
            (named::<ActionDoc<'_>>(list), "HTTPGetAction"),
            (named::<GrpcDoc>(list), "GRPCAction"),
            (named::<ContainerPortDoc<'_>>(list), "ContainerPort"),
            (named::<EphemeralDoc<'_>>(list), "EphemeralContainer"),
            (named::<NamesDoc<'_>>(list), "Container"),
            (named::<PortNameDoc<'_>>(list), "ContainerPort"),
        ] {
            assert_eq!(got, format!("invalid type: sequence, expected {want}"));
        }
        assert_eq!(
            named::<ContainerDoc<'_>>(number),
            "invalid type: integer `7`, expected Container"
        );
    }

    #[test]
    fn valid_pods() {
        assert!(msgs(&PodSpec::default()).is_empty());
        let mut app = container(
            "app",
            vec![cport("http", 8080), cport("metrics", 9090), cport("", 7070)],
        );
        app.readiness_probe = http_probe(IntOrString::String("http".into()));
        app.liveness_probe = http_probe(IntOrString::Int(8080));
        app.startup_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("metrics".into()),
                host: None,
            }),
            ..Probe::default()
        });
        let side = container("side", vec![cport("admin", 9000)]);
        assert!(msgs(&pod(vec![app, side])).is_empty());
    }

    #[test]
    fn container_port_names() {
        let spec = pod(vec![container(
            "app",
            vec![
                cport("HTTP", 80),
                cport("80", 81),
                cport("a--b", 82),
                cport("-a", 83),
                cport("abcdefghijklmnop", 84),
            ],
        )]);
        assert_eq!(
            msgs(&spec),
            [
                format!(r#"spec.containers[0].ports[0].name: Invalid value: "HTTP": {CHARSET}"#),
                format!(r#"spec.containers[0].ports[0].name: Invalid value: "HTTP": {LETTER}"#),
                format!(r#"spec.containers[0].ports[1].name: Invalid value: "80": {LETTER}"#),
                r#"spec.containers[0].ports[2].name: Invalid value: "a--b": must not contain consecutive hyphens"#
                    .to_owned(),
                r#"spec.containers[0].ports[3].name: Invalid value: "-a": must not begin or end with a hyphen"#
                    .to_owned(),
                r#"spec.containers[0].ports[4].name: Invalid value: "abcdefghijklmnop": must be no more than 15 characters"#
                    .to_owned(),
            ]
        );
        let opts = Options {
            letter_message: super::super::LetterMessage::LetterOnly,
        };
        let spec = pod(vec![container("app", vec![cport("80", 81)])]);
        assert_eq!(
            validate_pod_spec_ports(&spec, "spec", &opts)[0].to_string(),
            r#"spec.containers[0].ports[0].name: Invalid value: "80": must contain at least one letter (a-z)"#
        );
    }

    #[test]
    fn duplicate_names_within_a_container_are_upstream_duplicates() {
        let spec = pod(vec![container("app", vec![cport("http", 80), cport("http", 81)])]);
        assert_eq!(
            msgs(&spec),
            [r#"spec.containers[0].ports[1].name: Duplicate value: "http""#]
        );
        let errs = validate_pod_spec_ports(&spec, "spec", &Options::default());
        assert_eq!(errs[0].kind.reason(), "FieldValueDuplicate");
        // Two invalid names: four Invalid errors and no Duplicate, as upstream.
        let spec = pod(vec![container("app", vec![cport("HTTP", 80), cport("HTTP", 81)])]);
        assert_eq!(msgs(&spec).len(), 4);
        assert!(msgs(&spec).iter().all(|m| m.contains("Invalid value")));
    }

    #[test]
    fn duplicate_names_across_containers_are_refused() {
        let spec = PodSpec {
            containers: vec![
                container("app", vec![cport("http", 80)]),
                container("proxy", vec![cport("admin", 15000), cport("http", 8080)]),
            ],
            init_containers: Some(vec![container(
                "setup",
                vec![cport("http", 9999), cport("admin", 1)],
            )]),
            ..PodSpec::default()
        };
        let errs = validate_pod_spec_ports(&spec, "spec.template.spec", &Options::default());
        let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                r#"spec.template.spec.containers[1].ports[1].name: Invalid value: "http": must be unique within the pod: already declared by container "app" at spec.template.spec.containers[0].ports[0]"#,
                r#"spec.template.spec.initContainers[0].ports[0].name: Invalid value: "http": must be unique within the pod: already declared by container "app" at spec.template.spec.containers[0].ports[0]"#,
                r#"spec.template.spec.initContainers[0].ports[1].name: Invalid value: "admin": must be unique within the pod: already declared by container "proxy" at spec.template.spec.containers[1].ports[0]"#,
            ]
        );
        assert!(errs.iter().all(|e| e.kind.reason() == "FieldValueInvalid"));
    }

    #[test]
    fn container_port_numbers_and_protocols() {
        let mut p = cport("", 0);
        p.protocol = Some(String::new());
        let mut q = cport("", 65536);
        q.host_port = Some(70000);
        q.protocol = Some("HTTP".into());
        let mut r = cport("", -1);
        r.host_port = Some(0);
        r.protocol = None;
        let spec = pod(vec![container("app", vec![p, q, r])]);
        assert_eq!(
            msgs(&spec),
            [
                "spec.containers[0].ports[0].containerPort: Required value",
                "spec.containers[0].ports[0].protocol: Required value",
                "spec.containers[0].ports[1].containerPort: Invalid value: 65536: must be between 1 and 65535, inclusive",
                "spec.containers[0].ports[1].hostPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                r#"spec.containers[0].ports[1].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP""#,
                "spec.containers[0].ports[2].containerPort: Invalid value: -1: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn host_port_conflicts_like_upstream() {
        let hp = |port: i32, host: i32, proto: &str, ip: Option<&str>| ContainerPort {
            container_port: port,
            host_port: Some(host),
            protocol: Some(proto.into()),
            host_ip: ip.map(Into::into),
            ..ContainerPort::default()
        };
        let spec = PodSpec {
            containers: vec![
                container("a", vec![hp(80, 8080, "TCP", None)]),
                container(
                    "b",
                    vec![
                        hp(81, 8080, "TCP", None),
                        hp(82, 8080, "UDP", None),
                        hp(83, 8080, "TCP", Some("10.0.0.1")),
                    ],
                ),
            ],
            init_containers: Some(vec![
                // Same hostPort as a regular container, and as another init container: both fine.
                container("i0", vec![hp(80, 8080, "TCP", None)]),
                container("i1", vec![hp(80, 8080, "TCP", None), hp(81, 8080, "TCP", None)]),
            ]),
            ..PodSpec::default()
        };
        assert_eq!(
            msgs(&spec),
            [
                r#"spec.containers[1].ports[0].hostPort: Duplicate value: "TCP//8080""#,
                r#"spec.initContainers[1].ports[1].hostPort: Duplicate value: "TCP//8080""#,
            ]
        );
    }

    #[test]
    fn host_network_ports() {
        let mut mismatch = cport("", 80);
        mismatch.host_port = Some(8080);
        let mut unset = cport("", 81);
        unset.host_port = None;
        let mut same = cport("", 82);
        same.host_port = Some(82);
        let mut spec = pod(vec![container("app", vec![mismatch, unset, same])]);
        spec.init_containers = Some(vec![container(
            "init",
            vec![ContainerPort {
                container_port: 1,
                host_port: Some(2),
                ..ContainerPort::default()
            }],
        )]);
        assert!(msgs(&spec).is_empty());
        spec.host_network = Some(true);
        assert_eq!(
            msgs(&spec),
            [
                "spec.containers[0].ports[0].containerPort: Invalid value: 80: must match `hostPort` when `hostNetwork` is true"
            ]
        );
    }

    #[test]
    fn ephemeral_containers_may_not_declare_ports_or_probes() {
        let spec = PodSpec {
            ephemeral_containers: Some(vec![
                EphemeralContainer {
                    name: "debug".into(),
                    ports: Some(vec![]),
                    ..EphemeralContainer::default()
                },
                EphemeralContainer {
                    name: "bad".into(),
                    ports: Some(vec![cport("HTTP", 0)]),
                    readiness_probe: http_probe(IntOrString::String("nope".into())),
                    lifecycle: Some(Lifecycle::default()),
                    ..EphemeralContainer::default()
                },
            ]),
            ..PodSpec::default()
        };
        assert_eq!(
            msgs(&spec),
            [
                "spec.ephemeralContainers[1].ports: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[1].readinessProbe: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[1].lifecycle: Forbidden: cannot be set for an Ephemeral Container",
            ]
        );
    }

    #[test]
    fn probe_port_syntax() {
        let mut app = container("app", vec![cport("http", 80)]);
        app.liveness_probe = http_probe(IntOrString::String("HTTP_Port".into()));
        app.readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(0),
                host: None,
            }),
            ..Probe::default()
        });
        app.startup_probe = Some(Probe {
            grpc: Some(GRPCAction {
                port: 70000,
                service: None,
            }),
            ..Probe::default()
        });
        app.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::String("8080".into()),
                    ..Default::default()
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        assert_eq!(
            msgs(&pod(vec![app])),
            [
                format!(r#"spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: "8080": {LETTER}"#),
                format!(r#"spec.containers[0].livenessProbe.httpGet.port: Invalid value: "HTTP_Port": {CHARSET}"#),
                "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive"
                    .to_owned(),
                "spec.containers[0].startupProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn probe_named_ports_must_be_declared_by_the_same_container() {
        let mut app = container("app", vec![cport("http", 80)]);
        app.readiness_probe = http_probe(IntOrString::String("metrics".into()));
        app.liveness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("admin".into()),
                host: None,
            }),
            ..Probe::default()
        });
        app.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::String("grpc".into()),
                    host: None,
                }),
                ..LifecycleHandler::default()
            }),
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction::default()),
                sleep: Some(SleepAction { seconds: 5 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        let sidecar = container("sidecar", vec![cport("admin", 15000)]);
        let mut init = container("mesh", vec![cport("grpc", 15010)]);
        init.restart_policy = Some("Always".into());
        init.startup_probe = http_probe(IntOrString::String("http".into()));
        let spec = PodSpec {
            containers: vec![app, sidecar],
            init_containers: Some(vec![init]),
            ..PodSpec::default()
        };
        let errs = validate_pod_spec_ports(&spec, "spec", &Options::default());
        let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                r#"spec.containers[0].lifecycle.postStart.tcpSocket.port: Invalid value: "grpc": no port named "grpc" is declared by container "app" (container "mesh" declares it, but named ports resolve only within their own container)"#,
                r#"spec.containers[0].livenessProbe.tcpSocket.port: Invalid value: "admin": no port named "admin" is declared by container "app" (container "sidecar" declares it, but named ports resolve only within their own container)"#,
                r#"spec.containers[0].readinessProbe.httpGet.port: Invalid value: "metrics": no port named "metrics" is declared by container "app""#,
                r#"spec.initContainers[0].startupProbe.httpGet.port: Invalid value: "http": no port named "http" is declared by container "mesh" (container "app" declares it, but named ports resolve only within their own container)"#,
            ]
        );
        assert!(errs.iter().all(|e| e.kind.reason() == "FieldValueInvalid"));
    }

    #[test]
    fn probe_messages_name_several_containers_and_quote_hostile_names() {
        let mut a = container("a\u{200b}", vec![]);
        a.readiness_probe = http_probe(IntOrString::String("web".into()));
        let b = container("b", vec![cport("web", 1)]);
        let mut c = container("c", vec![]);
        c.ports = None;
        let init = container("d", vec![cport("web", 2)]);
        let spec = PodSpec {
            containers: vec![a, b, c],
            init_containers: Some(vec![init]),
            ..PodSpec::default()
        };
        assert_eq!(
            msgs(&spec),
            [
                r#"spec.initContainers[0].ports[0].name: Invalid value: "web": must be unique within the pod: already declared by container "b" at spec.containers[1].ports[0]"#,
                r#"spec.containers[0].readinessProbe.httpGet.port: Invalid value: "web": no port named "web" is declared by container "a\u200b" (containers "b", "d" declare it, but named ports resolve only within their own container)"#,
            ]
            .iter()
            .rev()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn pods_without_spec() {
        assert!(validate_pod(&Pod::default(), &Options::default()).is_empty());
        let p = Pod {
            spec: Some(pod(vec![container("a", vec![cport("", 0)])])),
            ..Pod::default()
        };
        assert_eq!(
            validate_pod(&p, &Options::default())[0].to_string(),
            "spec.containers[0].ports[0].containerPort: Required value"
        );
    }
}
