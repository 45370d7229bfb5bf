//! Leader election against a real apiserver: two candidates in this process, with separate
//! clients, campaign for one Lease with short timings (lease 2 s, renew deadline 1.5 s, retry
//! 0.3 s). A sampler looks at both every few milliseconds and fails the test if both ever
//! report leadership or run their work at the same time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use portico_controller_runtime::leader::{LeaderConfig, LeaderError, run_elected};
use portico_testenv::ControlPlane;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, setup};

const LEASE: &str = "portico-test-leader";
const LEASE_DURATION: Duration = Duration::from_secs(2);

fn config(ns: &str, identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(300),
        ..LeaderConfig::new(ns, LEASE, identity)
    }
}

/// One replica: `run_elected` with work that marks itself running until its token is cancelled.
struct Candidate {
    identity: String,
    gauge: prometheus::IntGauge,
    working: Arc<AtomicBool>,
    terms: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), LeaderError>>,
}

impl Candidate {
    fn start(client: kube::Client, ns: &str, identity: &str) -> Self {
        let gauge = prometheus::IntGauge::new("is_leader", "test").expect("gauge");
        let working = Arc::new(AtomicBool::new(false));
        let terms = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let (w, t) = (working.clone(), terms.clone());
        let handle = tokio::spawn(run_elected(
            client,
            config(ns, identity),
            gauge.clone(),
            shutdown.clone(),
            move |token: CancellationToken| async move {
                t.fetch_add(1, Ordering::SeqCst);
                w.store(true, Ordering::SeqCst);
                token.cancelled().await;
                w.store(false, Ordering::SeqCst);
            },
        ));
        Candidate {
            identity: identity.into(),
            gauge,
            working,
            terms,
            shutdown,
            handle,
        }
    }

    fn leads(&self) -> bool {
        self.gauge.get() == 1
    }

    fn works(&self) -> bool {
        self.working.load(Ordering::SeqCst)
    }

    /// Waits at most `within` for `run_elected` to end with a loss whose reason contains `why`,
    /// and checks that the work stopped and the gauge dropped on the way.
    async fn expect_loss(self, within: Duration, why: &str) {
        let result = tokio::time::timeout(within, self.handle)
            .await
            .expect("the leader gives up in time")
            .expect("run_elected panicked");
        match result {
            Err(LeaderError::Lost { reason, .. }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected a loss, got {other:?}"),
        }
        assert!(!self.working.load(Ordering::SeqCst) && self.gauge.get() == 0);
    }

    async fn stop(self) -> Result<(), LeaderError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.handle)
            .await
            .expect("run_elected returns promptly after shutdown")
            .expect("run_elected panicked")
    }
}

/// Samples two candidates every 5 ms until stopped; counts the samples where both led or
/// both worked.
struct Sampler {
    stop: CancellationToken,
    handle: JoinHandle<(usize, usize)>,
}

impl Sampler {
    fn start(a: &Candidate, b: &Candidate) -> Self {
        let (ga, gb) = (a.gauge.clone(), b.gauge.clone());
        let (wa, wb) = (a.working.clone(), b.working.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            let (mut samples, mut overlaps) = (0, 0);
            while !s.is_cancelled() {
                samples += 1;
                let both_lead = ga.get() == 1 && gb.get() == 1;
                let both_work = wa.load(Ordering::SeqCst) && wb.load(Ordering::SeqCst);
                if both_lead || both_work {
                    overlaps += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (samples, overlaps)
        });
        Sampler { stop, handle }
    }

    async fn finish(self) {
        self.stop.cancel();
        let (samples, overlaps) = self.handle.await.expect("sampler");
        assert!(samples > 100, "only {samples} samples");
        assert_eq!(
            overlaps, 0,
            "both candidates led at once in {overlaps} of {samples} samples"
        );
    }
}

async fn holder(client: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get(LEASE)
        .await
        .expect("read Lease")
        .spec
        .and_then(|s| s.holder_identity)
}

/// Waits until exactly one of the two leads and works; returns (leader, follower).
async fn one_leader<'a>(a: &'a Candidate, b: &'a Candidate) -> (&'a Candidate, &'a Candidate) {
    eventually(10, "one candidate to lead", || async {
        match (a.leads() && a.works(), b.leads() && b.works()) {
            (true, false) => Some((a, b)),
            (false, true) => Some((b, a)),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn one_leader_and_a_prompt_handover_on_shutdown() {
    let ns = "leader-handover";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let a = Candidate::start(client.clone(), ns, "replica-a");
    let b = Candidate::start(client.clone(), ns, "replica-b");
    let sampler = Sampler::start(&a, &b);

    let (leader, follower) = one_leader(&a, &b).await;
    assert_eq!(
        holder(&client, ns).await.as_deref(),
        Some(leader.identity.as_str())
    );
    // Several lease durations later nothing has changed: renewals keep the follower out.
    tokio::time::sleep(LEASE_DURATION * 2).await;
    assert!(leader.leads() && leader.works() && !follower.leads() && !follower.works());
    assert_eq!(leader.terms.load(Ordering::SeqCst), 1);
    assert_eq!(follower.terms.load(Ordering::SeqCst), 0);
    let transitions = |l: Lease| l.spec.and_then(|s| s.lease_transitions).unwrap_or_default();
    let api = Api::<Lease>::namespaced(client.clone(), ns);
    let before = transitions(api.get(LEASE).await.expect("Lease"));

    // The leader shuts down: it stops its work, releases the Lease, and the follower takes
    // over well within the lease duration.
    let (leader, follower) = if leader.identity == a.identity {
        (a, b)
    } else {
        (b, a)
    };
    let stopped = Instant::now();
    let leader_gauge = leader.gauge.clone();
    let leader_working = leader.working.clone();
    leader.stop().await.expect("a clean shutdown");
    assert_eq!(leader_gauge.get(), 0);
    assert!(!leader_working.load(Ordering::SeqCst));
    eventually(5, "the follower to take over", || async {
        (follower.leads() && follower.works()).then_some(())
    })
    .await;
    let took = stopped.elapsed();
    assert!(took < LEASE_DURATION, "handover took {took:?}");
    let lease = api.get(LEASE).await.expect("Lease");
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
        Some(follower.identity.as_str())
    );
    assert_eq!(transitions(lease), before + 1);

    sampler.finish().await;
    follower.stop().await.expect("a clean shutdown");
    assert_eq!(holder(&client, ns).await, None, "released on shutdown");
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_at_once() {
    let ns = "leader-stolen";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let a = Candidate::start(client.clone(), ns, "replica-a");
    eventually(10, "the first candidate to lead", || async {
        a.works().then_some(())
    })
    .await;
    let b = Candidate::start(client.clone(), ns, "replica-b");
    let sampler = Sampler::start(&a, &b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.leads() && !b.leads());

    // Someone else writes the Lease over the leader (conditionally, as any elector would).
    let api = Api::<Lease>::namespaced(client.clone(), ns);
    let stolen = loop {
        let mut lease = api.get(LEASE).await.expect("Lease");
        let spec = lease.spec.get_or_insert_default();
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        match api.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => break Instant::now(),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("steal the Lease: {e}"),
        }
    };

    // The leader notices at its next renewal and stops its work before returning.
    a.expect_loss(Duration::from_secs(3), "intruder").await;
    let noticed = stolen.elapsed();
    assert!(
        noticed < Duration::from_secs(1),
        "the loss was noticed after {noticed:?}"
    );

    // The intruder never renews, so the other candidate takes over once the record has been
    // unchanged for the lease duration.
    eventually(5, "the other candidate to take over", || async {
        (b.leads() && b.works()).then_some(())
    })
    .await;
    let took = stolen.elapsed();
    assert!(
        took >= LEASE_DURATION - Duration::from_millis(50) && took < LEASE_DURATION + Duration::from_secs(1),
        "took over after {took:?}"
    );
    assert_eq!(holder(&client, ns).await.as_deref(), Some("replica-b"));

    sampler.finish().await;
    b.stop().await.expect("a clean shutdown");
}

/// A TCP proxy to the apiserver that can be cut: after `cut`, established connections stop
/// forwarding and new ones are dropped (`reset`) or held open without an answer (a black hole).
struct Proxy {
    addr: SocketAddr,
    cut: CancellationToken,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(upstream: SocketAddr, reset: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, stop) = (CancellationToken::new(), CancellationToken::new());
        let (c, s) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut down = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((conn, _)) => conn,
                        Err(_) => continue,
                    },
                };
                let (c, s) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    if !c.is_cancelled()
                        && let Ok(mut up) = TcpStream::connect(upstream).await
                    {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => return,
                            () = c.cancelled() => {}
                        }
                    }
                    if !reset {
                        // Hold the connection open, silent, until the test ends.
                        s.cancelled().await;
                    }
                });
            }
        });
        Proxy { addr, cut, stop }
    }

    /// An admin client that talks to the apiserver through this proxy.
    async fn client(&self, cp: &ControlPlane) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).expect("kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .expect("client config");
        config.cluster_url = format!("https://{}", self.addr).parse().expect("proxy URL");
        kube::Client::try_from(config).expect("proxied client")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The leader loses the apiserver (its requests fail, or hang): it must stop its work by the
/// renew deadline, before the lease duration lets the other candidate in.
async fn partitioned_leader_steps_down_before_takeover(ns: &str, reset: bool) {
    let Some((cp, client)) = setup(ns).await else {
        return;
    };
    let upstream: SocketAddr = cp
        .server()
        .trim_start_matches("https://")
        .parse()
        .expect("apiserver address");
    let proxy = Proxy::start(upstream, reset).await;
    let a = Candidate::start(proxy.client(cp).await, ns, "replica-a");
    eventually(10, "the proxied candidate to lead", || async {
        a.works().then_some(())
    })
    .await;
    let b = Candidate::start(client.clone(), ns, "replica-b");
    let sampler = Sampler::start(&a, &b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.leads() && !b.leads());

    let cut = Instant::now();
    proxy.cut.cancel();
    a.expect_loss(Duration::from_secs(5), "renew deadline").await;
    let stepped_down = cut.elapsed();
    // The deadline runs from the last successful renewal, at most one retry period before the
    // cut.
    assert!(
        stepped_down <= Duration::from_millis(1500 + 200),
        "stepped down {stepped_down:?} after the cut"
    );

    eventually(5, "the other candidate to take over", || async {
        (b.leads() && b.works()).then_some(())
    })
    .await;
    let took = cut.elapsed();
    assert!(
        took < LEASE_DURATION + Duration::from_secs(1),
        "took over after {took:?}"
    );
    assert_eq!(holder(&client, ns).await.as_deref(), Some("replica-b"));

    sampler.finish().await;
    b.stop().await.expect("a clean shutdown");
}

#[tokio::test]
async fn a_leader_cut_off_by_errors_steps_down_before_takeover() {
    partitioned_leader_steps_down_before_takeover("leader-cut-reset", true).await;
}

#[tokio::test]
async fn a_leader_cut_off_by_hanging_requests_steps_down_before_takeover() {
    partitioned_leader_steps_down_before_takeover("leader-cut-hang", false).await;
}
