use std::io::Write;
use std::sync::OnceLock;

use crate::{Assets, ControlPlane, ControlPlaneConfig};

/// Set to make missing binaries a failure instead of a skip (for machines that must run the
/// integration suite).
pub const REQUIRE_ENV: &str = "PORTICO_REQUIRE_INTEGRATION";

/// The control plane shared by every test in this binary, started on first use, or `None`
/// (after printing [`skip_notice`] once) when the binaries are absent.
///
/// Start-up takes seconds, so tests share one instance and isolate themselves by namespace.
/// It runs on a thread of its own: each test's `#[tokio::test]` runtime is short-lived, and
/// nothing of the control plane may be tied to one (make clients with
/// [`ControlPlane::client`] inside the test). Its processes are killed at process exit.
///
/// # Panics
/// When the binaries are present but the control plane does not start: that is a failure,
/// not a reason to skip.
pub fn shared() -> Option<&'static ControlPlane> {
    static SHARED: OnceLock<Option<ControlPlane>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let assets = match Assets::discover() {
                Ok(a) => a,
                Err(missing) => {
                    if integration_required() {
                        panic!("{REQUIRE_ENV} is set but {missing}");
                    }
                    let _ = writeln!(std::io::stderr(), "{}", skip_notice(&missing.to_string()));
                    return None;
                }
            };
            let started = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(ControlPlane::start_with(&assets, ControlPlaneConfig::default()))
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
            .join();
            match started {
                Ok(Ok(cp)) => Some(cp),
                Ok(Err(e)) => panic!("the shared control plane did not start: {e}"),
                Err(_) => panic!("the shared control plane's start-up thread panicked"),
            }
        })
        .as_ref()
}

/// Whether [`REQUIRE_ENV`] is set to anything but empty, `0` or `false` (as the chart tests read
/// it): then whatever would make the suite skip is a failure.
pub fn integration_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The one line printed when the integration suite skips.
pub fn skip_notice(reason: &str) -> String {
    format!("portico integration suite SKIPPED: {reason}")
}
