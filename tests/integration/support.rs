//! Shared helpers for the integration tests.

use portico_testenv::ControlPlane;

/// The shared control plane and an admin client for this test's runtime, with `ns` created;
/// `None` when the suite skips.
pub async fn setup(ns: &str) -> Option<(&'static ControlPlane, kube::Client)> {
    let cp = portico_testenv::shared()?;
    let client = cp.client().await.expect("admin client");
    portico_testenv::fixtures::namespace(&client, ns)
        .await
        .expect("namespace");
    Some((cp, client))
}

#[allow(dead_code)] // used by the controller and webhook scenarios
/// Polls `check` until it returns `Some`, or panics after `secs` seconds with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
