//! What happens to a Service key after a sync: the controllers' `error_policy`.
//!
//! Upstream's discipline, per controller queue: a failing key is retried with exponential
//! backoff per key (EndpointSlice: 1 s doubling to 1000 s; Endpoints: from 5 ms to 1000 s;
//! mirroring: 1 s to 100 s) under an overall bucket of 10 retries a second in bursts of 100,
//! so an outage does not turn every Service into a retry loop in lockstep. Upstream gives up on a key after 15 failures;
//! Portico keeps it at the 1000 s ceiling instead, since a dropped key is a Service nobody
//! reconciles until something else about it changes.

use std::time::Duration;

use crate::SyncError;
use crate::queue::{Backoff, Bucket};

/// Per-key backoff of the EndpointSlice controller's queue.
pub(crate) const SLICE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(1000),
};

/// Per-key backoff of the mirroring controller's queue.
pub(crate) const MIRROR_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(100),
};

/// Per-key backoff of the Endpoints controller's queue.
pub(crate) const ENDPOINTS_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(5),
    max: Duration::from_secs(1000),
};

/// Overall retry rate of each controller's queue (client-go's default controller limiter).
pub(crate) const RETRY_BUCKET: Bucket = Bucket {
    qps: 10.0,
    burst: 100,
};

/// How soon a sync that found the cache behind our own last write is retried at first; the
/// delay grows with the time the Service has been stale, up to [`STALE_RETRY_MAX`].
const STALE_RETRY: Duration = Duration::from_millis(100);
const STALE_RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a Service's syncs may find the cache behind the controller's own writes before
/// the record of those writes is dropped and the sync goes on from the cache: a write can be
/// undone in a way no event explains (a slice held by another's finalizer, an event lost),
/// and waiting for it would stop the Service being reconciled for good.
pub(crate) const STALE_LIMIT: Duration = Duration::from_secs(60);

/// When to sync a key again after its sync failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// After this delay, outside the backoff: the key's failure count is left as it is.
    After(Duration),
    /// With the key's exponential backoff, under the queue's overall bucket.
    RateLimited,
}

/// How loudly a failure is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loudness {
    /// Expected under churn and fixes itself (conflicts, a cache behind our writes).
    Debug,
    /// Anything else.
    Warn,
}

/// The retry for a failed sync. `stale_for` is how long the key's syncs have found the cache
/// stale (zero for any other error).
///
/// A stale cache is polled rather than backed off: the echo of our own write is on its way,
/// and under load it can take seconds; an exponential backoff would keep growing meanwhile
/// and strand the key long after the cache caught up. A stale sync returns before any API
/// call, so a poll costs one cache read.
pub(crate) fn error_policy(err: &SyncError, stale_for: Duration) -> (Retry, Loudness) {
    match err {
        SyncError::Stale(_) => (
            Retry::After((stale_for / 4).clamp(STALE_RETRY, STALE_RETRY_MAX)),
            Loudness::Debug,
        ),
        e if e.is_conflict() => (Retry::RateLimited, Loudness::Debug),
        _ => (Retry::RateLimited, Loudness::Warn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_controllers::ReconcileError;

    fn api(code: u16) -> SyncError {
        SyncError::Api {
            verb: "update",
            kind: "EndpointSlice",
            name: "web-abcde".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("refused", "Reason")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn error_policy_table() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let stale = SyncError::Stale("EndpointSlice");
        let skipped = SyncError::Reconcile(ReconcileError::PodsSkipped(Vec::new()));
        let rows: Vec<(&SyncError, Duration, Retry, Loudness)> = vec![
            (&stale, Duration::ZERO, Retry::After(ms(100)), Loudness::Debug),
            (&stale, s(1), Retry::After(ms(250)), Loudness::Debug),
            (&stale, s(4), Retry::After(s(1)), Loudness::Debug),
            (&stale, s(59), Retry::After(s(2)), Loudness::Debug),
            (&skipped, Duration::ZERO, Retry::RateLimited, Loudness::Warn),
        ];
        for (err, stale_for, retry, loudness) in rows {
            assert_eq!(
                error_policy(err, stale_for),
                (retry, loudness),
                "{err} after {stale_for:?}"
            );
        }
        assert_eq!(
            error_policy(&api(409), Duration::ZERO),
            (Retry::RateLimited, Loudness::Debug)
        );
        assert_eq!(
            error_policy(&api(500), Duration::ZERO),
            (Retry::RateLimited, Loudness::Warn)
        );
        let timeout = SyncError::Timeout(s(60));
        assert_eq!(
            error_policy(&timeout, Duration::ZERO),
            (Retry::RateLimited, Loudness::Warn)
        );
    }

    /// The constants are upstream's: a change here is a change of observable behaviour.
    #[test]
    fn upstreams_limits() {
        assert_eq!(
            (SLICE_BACKOFF.base, SLICE_BACKOFF.max),
            (Duration::from_secs(1), Duration::from_secs(1000))
        );
        assert_eq!(ENDPOINTS_BACKOFF.base, Duration::from_millis(5));
        assert_eq!(
            (MIRROR_BACKOFF.base, MIRROR_BACKOFF.max),
            (Duration::from_secs(1), Duration::from_secs(100))
        );
        assert_eq!((RETRY_BUCKET.qps, RETRY_BUCKET.burst), (10.0, 100));
    }
}
