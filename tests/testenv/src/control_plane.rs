use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::instrument::WithSubscriber;

use crate::assets::{Assets, MissingAssets};
use portico_webhook::DevCa;

use crate::certs;
use crate::process::{self, Supervised};

/// What can go wrong starting or talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries are not installed.
    #[error(transparent)]
    Missing(#[from] MissingAssets),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certs(#[from] rcgen::Error),
    /// Making the CA or the apiserver's serving certificate failed.
    #[error("{0}")]
    Ca(#[from] portico_webhook::Error),
    /// A child exited during start-up.
    #[error("{name} exited during start-up ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// Which process.
        name: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// A child did not become ready in time.
    #[error("{name} not ready after {after:?} (last answer: {last}); last log lines:\n{log_tail}")]
    NotReady {
        /// Which process.
        name: &'static str,
        /// How long we waited.
        after: Duration,
        /// The last probe result.
        last: String,
        /// The end of its log.
        log_tail: String,
    },
    /// Building a client failed.
    #[error("building a client: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Per-instance settings; the defaults suit most tests.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// `--service-cluster-ip-range` (one CIDR, or two comma-separated for dual-stack).
    pub service_cluster_ip_range: String,
    /// `--service-node-port-range`.
    pub service_node_port_range: String,
    /// `--authorization-mode`; RBAC so tests can run Portico under a restricted identity.
    pub authorization_mode: String,
    /// Anything else to pass to kube-apiserver.
    pub extra_apiserver_args: Vec<String>,
    /// How long to wait for `/readyz`.
    pub startup_timeout: Duration,
    /// Where to put the instance's directory; `/dev/shm` when it exists, so etcd's fsyncs
    /// cost nothing.
    pub base_dir: Option<PathBuf>,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            service_cluster_ip_range: "10.96.0.0/16".into(),
            service_node_port_range: "30000-32767".into(),
            authorization_mode: "RBAC".into(),
            extra_apiserver_args: Vec::new(),
            startup_timeout: Duration::from_secs(90),
            base_dir: None,
        }
    }
}

/// A running etcd + kube-apiserver pair. Dropping it kills both and removes its directory.
pub struct ControlPlane {
    apiserver: Supervised,
    /// kube-apiserver's program and arguments, to start it again.
    apiserver_cmd: (PathBuf, Vec<String>),
    etcd: Supervised,
    etcd_url: String,
    dir: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    ca: DevCa,
    config: ControlPlaneConfig,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .finish()
    }
}

const ATTEMPTS: usize = 3;

impl ControlPlane {
    /// Starts etcd and kube-apiserver from [`Assets::discover`] and waits for `/readyz`.
    pub async fn start(config: ControlPlaneConfig) -> Result<Self, Error> {
        let assets = Assets::discover()?;
        Self::start_with(&assets, config).await
    }

    /// Like [`ControlPlane::start`] with explicit binaries. Start-up is retried a few times,
    /// since a free port picked here can be taken by someone else before the child binds it.
    pub async fn start_with(assets: &Assets, config: ControlPlaneConfig) -> Result<Self, Error> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match Self::try_start(assets, config.clone()).await {
                Ok(cp) => return Ok(cp),
                Err(e @ Error::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn try_start(assets: &Assets, config: ControlPlaneConfig) -> Result<Self, Error> {
        let base = config.base_dir.clone().unwrap_or_else(default_base_dir);
        let dir = tempfile::Builder::new()
            .prefix("portico-testenv-")
            .tempdir_in(&base)
            .map_err(io(format!("creating a directory in {}", base.display())))?
            .keep();
        process::remove_dir_at_exit(dir.clone());
        // From here on, an early return must not leave the directory behind.
        let cleanup = DirGuard(Some(dir.clone()));

        let etcd_port = process::free_port().map_err(io("picking a port"))?;
        let peer_port = process::free_port().map_err(io("picking a port"))?;
        let api_port = process::free_port().map_err(io("picking a port"))?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");

        let mut etcd_cmd = Command::new(&assets.etcd);
        etcd_cmd.args([
            "--name=default".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--logger=zap".to_owned(),
        ]);
        let mut etcd = spawn_logged("etcd", etcd_cmd, &dir)?;
        wait_etcd(&mut etcd, etcd_port, config.startup_timeout)?;

        let ca = DevCa::new("portico-testenv-ca")?;
        let (serving_cert, serving_key) =
            ca.issue_serving(&["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"])?;
        let (sa_key, sa_pub) = certs::signing_key_pem()?;
        let token = random_token().map_err(io("reading /dev/urandom"))?;
        let files = [
            ("ca.crt", ca.pem().to_owned()),
            ("apiserver.crt", serving_cert),
            ("apiserver.key", serving_key),
            ("sa.key", sa_key),
            ("sa.pub", sa_pub),
            ("tokens.csv", format!("{token},admin,admin,system:masters\n")),
        ];
        for (name, body) in &files {
            std::fs::write(dir.join(name), body).map_err(io(format!("writing {name}")))?;
        }
        let p = |name: &str| dir.join(name).display().to_string();
        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            format!("--authorization-mode={}", config.authorization_mode),
            format!("--service-cluster-ip-range={}", config.service_cluster_ip_range),
            format!("--service-node-port-range={}", config.service_node_port_range),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
            // The `kubernetes` Service gets no Endpoints (envtest does the same): from 1.33 the
            // apiserver refuses to publish a loopback address there and exits.
            "--endpoint-reconciler-type=none".to_owned(),
        ];
        // Endpoint hints are stored only with this gate, GA (always on) from 1.33; enable it
        // where it still is a gate, so tests see the behaviour of current clusters.
        if matches!(apiserver_minor(&assets.kube_apiserver), Some(21..=32)) {
            api_args.push("--feature-gates=TopologyAwareHints=true".to_owned());
        }
        api_args.extend(config.extra_apiserver_args.iter().cloned());
        let apiserver_cmd = (assets.kube_apiserver.clone(), api_args);
        let mut apiserver = spawn_apiserver(&apiserver_cmd, &dir)?;

        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        let kc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "portico-testenv", "cluster": {
                "server": server, "certificate-authority": p("ca.crt")}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "portico-testenv", "context": {"cluster": "portico-testenv", "user": "admin"}}],
            "current-context": "portico-testenv",
        });
        // JSON is YAML, so kubectl and kube-rs both read this file as it is.
        std::fs::write(&kubeconfig, serde_json::to_vec_pretty(&kc).unwrap_or_default())
            .map_err(io("writing the kubeconfig"))?;

        let client = client_from(&kubeconfig, None).await?;
        // The client logs every 500 from /readyz as an error; while starting that is expected.
        wait_ready(&mut apiserver, &client, config.startup_timeout)
            .with_subscriber(tracing::subscriber::NoSubscriber::default())
            .await?;

        cleanup.disarm();
        Ok(ControlPlane {
            apiserver,
            apiserver_cmd,
            etcd,
            etcd_url,
            dir,
            server,
            kubeconfig,
            ca,
            config,
        })
    }

    /// Kills kube-apiserver, keeps it down for `down_for`, and starts it again on the same
    /// port, certificates and etcd (so nothing stored is lost), then waits for `/readyz`.
    /// Clients keep working across it: what a rolling control-plane upgrade looks like to them.
    pub async fn restart_apiserver(&mut self, down_for: Duration) -> Result<(), Error> {
        self.stop_apiserver();
        tokio::time::sleep(down_for).await;
        self.start_apiserver().await
    }

    /// Kills kube-apiserver (etcd keeps running); [`ControlPlane::start_apiserver`] brings it
    /// back.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop();
        // Keep the stopped process's log for diagnosis; the new one writes a fresh file.
        let log = self.dir.join("kube-apiserver.log");
        let _ = std::fs::rename(&log, self.dir.join("kube-apiserver.before-restart.log"));
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`], on the same port,
    /// certificates and etcd, and waits for `/readyz`.
    pub async fn start_apiserver(&mut self) -> Result<(), Error> {
        // The port was just released; a rebind can race the kernel on a busy machine.
        let mut attempt = 1;
        loop {
            let mut apiserver = spawn_apiserver(&self.apiserver_cmd, &self.dir)?;
            let client = client_from(&self.kubeconfig, None).await?;
            match wait_ready(&mut apiserver, &client, self.config.startup_timeout)
                .with_subscriber(tracing::subscriber::NoSubscriber::default())
                .await
            {
                Ok(()) => {
                    self.apiserver = apiserver;
                    return Ok(());
                }
                Err(Error::Exited { .. }) if attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes `key` (e.g. `/registry/endpointslices/<ns>/<name>`) from etcd directly, behind
    /// the apiserver's back: with the apiserver stopped, no watch ever sees that deletion, as
    /// when a watch was down while it happened. Returns how many keys were deleted.
    pub fn etcd_delete(&self, key: &str) -> Result<u64, Error> {
        use base64::Engine;
        let err = |e: std::io::Error| Error::Io {
            context: format!("deleting {key} from etcd"),
            source: e,
        };
        let body =
            serde_json::json!({"key": base64::engine::general_purpose::STANDARD.encode(key)}).to_string();
        let port: u16 = self
            .etcd_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| err(std::io::Error::other("no etcd port")))?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(err)?;
        let request = format!(
            "POST /v3/kv/deleterange HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).map_err(err)?;
        let mut response = String::new();
        s.read_to_string(&mut response).map_err(err)?;
        let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let parsed: serde_json::Value =
            serde_json::from_str(json).map_err(|e| err(std::io::Error::other(format!("{e}: {response}"))))?;
        // proto3 JSON: int64 as a string, and absent when 0.
        Ok(parsed["deleted"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0))
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig with an admin (system:masters) identity, for kubectl and for Portico.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA that signed the apiserver's certificate; it can sign webhook certificates too.
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The settings this instance runs with.
    pub fn config(&self) -> &ControlPlaneConfig {
        &self.config
    }

    /// The instance's directory (data, certificates, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process ids of etcd and kube-apiserver.
    pub fn pids(&self) -> [u32; 2] {
        [self.etcd.pid(), self.apiserver.pid()]
    }

    /// An admin client, bound to the caller's tokio runtime.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_from(&self.kubeconfig, None).await
    }

    /// The admin client's configuration, for callers that build their own client stack.
    pub async fn kube_config(&self) -> Result<kube::Config, Error> {
        config_from(&self.kubeconfig).await
    }

    /// A client that impersonates `user` in `groups`, so RBAC applies to what it does, e.g.
    /// `system:serviceaccount:portico:portico` with `["system:serviceaccounts"]`.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<kube::Client, Error> {
        client_from(&self.kubeconfig, Some((user, groups))).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Fields drop after this body, but the directory must outlive the processes using it.
        self.apiserver.stop();
        self.etcd.stop();
        process::forget_dir(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            process::forget_dir(&dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn default_base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = tempfile::tempdir_in(shm).is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The minor version `kube-apiserver --version` reports (`Kubernetes v1.24.0-portico`: 24).
fn apiserver_minor(binary: &Path) -> Option<u32> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    parse_minor(&String::from_utf8_lossy(&out.stdout))
}

fn parse_minor(version: &str) -> Option<u32> {
    let v = version.split_whitespace().last()?.strip_prefix("v1.")?;
    v.split(['.', '-', '+']).next()?.parse().ok()
}

fn spawn_apiserver((program, args): &(PathBuf, Vec<String>), dir: &Path) -> Result<Supervised, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    spawn_logged("kube-apiserver", cmd, dir)
}

fn spawn_logged(name: &'static str, mut cmd: Command, dir: &Path) -> Result<Supervised, Error> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io("cloning a log handle"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    Supervised::spawn(name, cmd, log).map_err(io(format!("starting {name}")))
}

fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn exited(p: &mut Supervised) -> Result<(), Error> {
    match p.exited() {
        Some(status) => Err(Error::Exited {
            name: p.name,
            status,
            log_tail: p.log_tail(20),
        }),
        None => Ok(()),
    }
}

fn wait_etcd(etcd: &mut Supervised, port: u16, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        exited(etcd)?;
        match etcd_health(port) {
            Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::NotReady {
        name: "etcd",
        after: timeout,
        last,
        log_tail: etcd.log_tail(20),
    })
}

fn etcd_health(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

async fn wait_ready(
    apiserver: &mut Supervised,
    client: &kube::Client,
    timeout: Duration,
) -> Result<(), Error> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        exited(apiserver)?;
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| Error::Io {
                context: "building the /readyz request".into(),
                source: std::io::Error::other(e),
            })?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::NotReady {
        name: "kube-apiserver",
        after: timeout,
        last,
        log_tail: apiserver.log_tail(20),
    })
}

async fn config_from(kubeconfig: &Path) -> Result<kube::Config, Error> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}

async fn client_from(kubeconfig: &Path, impersonate: Option<(&str, &[&str])>) -> Result<kube::Client, Error> {
    let mut kc = Kubeconfig::read_from(kubeconfig)?;
    if let Some((user, groups)) = impersonate {
        for named in &mut kc.auth_infos {
            if let Some(auth) = named.auth_info.as_mut() {
                auth.impersonate = Some(user.to_owned());
                auth.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
            }
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn apiserver_versions() {
        assert_eq!(super::parse_minor("Kubernetes v1.24.0-portico\n"), Some(24));
        assert_eq!(super::parse_minor("Kubernetes v1.33.2"), Some(33));
        assert_eq!(super::parse_minor("Kubernetes v1.35.0-alpha.1+abc"), Some(35));
        assert_eq!(super::parse_minor("garbage"), None);
    }
}
