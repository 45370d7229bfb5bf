//! The controllers' Prometheus metrics, registered in the process's one registry.
//!
//! Names follow upstream where upstream has the series: the EndpointSlice controller's
//! `endpoint_slice_controller_*` family, the mirroring controller's
//! `endpoint_slice_mirroring_controller_*` family and client-go's `workqueue_*{name}` (queue
//! names `endpoint_slice`, `endpoint` and `endpoint_slice_mirroring`). Portico's own series
//! carry a `portico_` prefix.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};

/// All series of the controllers.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) endpoints_added_per_sync: prometheus::Histogram,
    pub(crate) endpoints_removed_per_sync: prometheus::Histogram,
    pub(crate) endpoints_desired: IntGauge,
    pub(crate) num_endpoint_slices: IntGauge,
    pub(crate) desired_endpoint_slices: IntGauge,
    pub(crate) slice_changes: IntCounterVec,
    pub(crate) slices_changed_per_sync: HistogramVec,
    pub(crate) slice_syncs: IntCounterVec,
    pub(crate) endpoints_changes: IntCounterVec,
    pub(crate) endpoints_syncs: IntCounterVec,
    pub(crate) mirror: MirrorMetrics,
    pub(crate) queue_depth: IntGaugeVec,
    pub(crate) queue_adds: IntCounterVec,
    pub(crate) queue_retries: IntCounterVec,
    pub(crate) work_duration: HistogramVec,
    pub(crate) reconcile_errors: IntCounterVec,
    pub(crate) watch_restarts: IntCounterVec,
}

/// The mirroring controller's series (upstream's `endpoint_slice_mirroring_controller_*`, and
/// Portico's own count of syncs).
#[derive(Clone)]
pub(crate) struct MirrorMetrics {
    pub(crate) endpoints_added_per_sync: Histogram,
    pub(crate) endpoints_updated_per_sync: Histogram,
    pub(crate) endpoints_removed_per_sync: Histogram,
    pub(crate) addresses_skipped_per_sync: Histogram,
    pub(crate) endpoints_sync_duration: Histogram,
    pub(crate) endpoints_desired: IntGauge,
    pub(crate) num_endpoint_slices: IntGauge,
    pub(crate) desired_endpoint_slices: IntGauge,
    pub(crate) changes: IntCounterVec,
    pub(crate) syncs: IntCounterVec,
}

impl MirrorMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        const SUBSYSTEM: &str = "endpoint_slice_mirroring_controller";
        let per_sync = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .subsystem(SUBSYSTEM)
                    .buckets(exponential_buckets(2.0, 2.0, 15).unwrap_or_default()),
            )
        };
        let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help).subsystem(SUBSYSTEM));
        Ok(MirrorMetrics {
            endpoints_added_per_sync: per_sync(
                "endpoints_added_per_sync",
                "Number of endpoints added on each Endpoints sync",
            )?,
            endpoints_updated_per_sync: per_sync(
                "endpoints_updated_per_sync",
                "Number of endpoints updated on each Endpoints sync",
            )?,
            endpoints_removed_per_sync: per_sync(
                "endpoints_removed_per_sync",
                "Number of endpoints removed on each Endpoints sync",
            )?,
            addresses_skipped_per_sync: per_sync(
                "addresses_skipped_per_sync",
                "Number of addresses skipped on each Endpoints sync due to being invalid or exceeding MaxEndpointsPerSubset",
            )?,
            endpoints_sync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "endpoints_sync_duration",
                    "Duration of syncEndpoints() in seconds",
                )
                .subsystem(SUBSYSTEM)
                .buckets(exponential_buckets(0.001, 2.0, 15).unwrap_or_default()),
            )?,
            endpoints_desired: gauge("endpoints_desired", "Number of endpoints desired")?,
            num_endpoint_slices: gauge("num_endpoint_slices", "Number of EndpointSlices")?,
            desired_endpoint_slices: gauge(
                "desired_endpoint_slices",
                "Number of EndpointSlices that would exist with perfect endpoint allocation",
            )?,
            changes: IntCounterVec::new(
                Opts::new("changes", "Number of EndpointSlice changes").subsystem(SUBSYSTEM),
                &["operation"],
            )?,
            syncs: IntCounterVec::new(
                Opts::new(
                    "portico_endpointslice_mirroring_controller_syncs_total",
                    "Number of EndpointSlice mirroring syncs",
                ),
                &["result"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.endpoints_added_per_sync.clone()))?;
        registry.register(Box::new(self.endpoints_updated_per_sync.clone()))?;
        registry.register(Box::new(self.endpoints_removed_per_sync.clone()))?;
        registry.register(Box::new(self.addresses_skipped_per_sync.clone()))?;
        registry.register(Box::new(self.endpoints_sync_duration.clone()))?;
        registry.register(Box::new(self.endpoints_desired.clone()))?;
        registry.register(Box::new(self.num_endpoint_slices.clone()))?;
        registry.register(Box::new(self.desired_endpoint_slices.clone()))?;
        registry.register(Box::new(self.changes.clone()))?;
        registry.register(Box::new(self.syncs.clone()))
    }
}

/// Registering failed: a series of the same name is already in the registry.
#[derive(Debug, thiserror::Error)]
#[error("registering controller metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let per_sync = |name: &str, help: &str| {
            prometheus::Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .subsystem("endpoint_slice_controller")
                    .buckets(exponential_buckets(2.0, 2.0, 15).unwrap_or_default()),
            )
        };
        let m = Metrics {
            endpoints_added_per_sync: per_sync(
                "endpoints_added_per_sync",
                "Number of endpoints added on each Service sync",
            )?,
            endpoints_removed_per_sync: per_sync(
                "endpoints_removed_per_sync",
                "Number of endpoints removed on each Service sync",
            )?,
            endpoints_desired: IntGauge::with_opts(
                Opts::new("endpoints_desired", "Number of endpoints desired")
                    .subsystem("endpoint_slice_controller"),
            )?,
            num_endpoint_slices: IntGauge::with_opts(
                Opts::new("num_endpoint_slices", "Number of EndpointSlices")
                    .subsystem("endpoint_slice_controller"),
            )?,
            desired_endpoint_slices: IntGauge::with_opts(
                Opts::new(
                    "desired_endpoint_slices",
                    "Number of EndpointSlices that would exist with perfect endpoint allocation",
                )
                .subsystem("endpoint_slice_controller"),
            )?,
            slice_changes: IntCounterVec::new(
                Opts::new("changes", "Number of EndpointSlice changes")
                    .subsystem("endpoint_slice_controller"),
                &["operation"],
            )?,
            slices_changed_per_sync: HistogramVec::new(
                HistogramOpts::new(
                    "endpointslices_changed_per_sync",
                    "Number of EndpointSlices changed on each Service sync",
                )
                .subsystem("endpoint_slice_controller"),
                &["topology", "traffic_distribution"],
            )?,
            slice_syncs: IntCounterVec::new(
                Opts::new("syncs", "Number of EndpointSlice syncs").subsystem("endpoint_slice_controller"),
                &["result"],
            )?,
            endpoints_changes: IntCounterVec::new(
                Opts::new(
                    "portico_endpoints_controller_changes_total",
                    "Number of Endpoints changes",
                ),
                &["operation"],
            )?,
            endpoints_syncs: IntCounterVec::new(
                Opts::new(
                    "portico_endpoints_controller_syncs_total",
                    "Number of Endpoints syncs",
                ),
                &["result"],
            )?,
            mirror: MirrorMetrics::new()?,
            queue_depth: IntGaugeVec::new(
                Opts::new("workqueue_depth", "Current depth of workqueue"),
                &["name"],
            )?,
            queue_adds: IntCounterVec::new(
                Opts::new(
                    "workqueue_adds_total",
                    "Total number of adds handled by workqueue",
                ),
                &["name"],
            )?,
            queue_retries: IntCounterVec::new(
                Opts::new(
                    "workqueue_retries_total",
                    "Total number of retries handled by workqueue",
                ),
                &["name"],
            )?,
            work_duration: HistogramVec::new(
                HistogramOpts::new(
                    "workqueue_work_duration_seconds",
                    "How long in seconds processing an item from workqueue takes",
                )
                .buckets(exponential_buckets(1e-5, 4.0, 12).unwrap_or_default()),
                &["name"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "portico_controller_reconcile_errors_total",
                    "Failed syncs by controller and error kind",
                ),
                &["controller", "error"],
            )?,
            watch_restarts: IntCounterVec::new(
                Opts::new(
                    "portico_controller_watch_restarts_total",
                    "Watch (re)lists by resource",
                ),
                &["resource"],
            )?,
        };
        registry.register(Box::new(m.endpoints_added_per_sync.clone()))?;
        registry.register(Box::new(m.endpoints_removed_per_sync.clone()))?;
        registry.register(Box::new(m.endpoints_desired.clone()))?;
        registry.register(Box::new(m.num_endpoint_slices.clone()))?;
        registry.register(Box::new(m.desired_endpoint_slices.clone()))?;
        registry.register(Box::new(m.slice_changes.clone()))?;
        registry.register(Box::new(m.slices_changed_per_sync.clone()))?;
        registry.register(Box::new(m.slice_syncs.clone()))?;
        registry.register(Box::new(m.endpoints_changes.clone()))?;
        registry.register(Box::new(m.endpoints_syncs.clone()))?;
        m.mirror.register(registry)?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.queue_adds.clone()))?;
        registry.register(Box::new(m.queue_retries.clone()))?;
        registry.register(Box::new(m.work_duration.clone()))?;
        registry.register(Box::new(m.reconcile_errors.clone()))?;
        registry.register(Box::new(m.watch_restarts.clone()))?;
        Ok(m)
    }
}

/// The three cluster-wide gauges of a slice-managing controller (`endpoints_desired`,
/// `desired_endpoint_slices`, `num_endpoint_slices`), kept equal to the sum over keys of what
/// each key's last sync found.
pub(crate) struct SliceGauges {
    gauges: [IntGauge; 3],
    last: std::sync::Mutex<std::collections::HashMap<portico_controllers::ServiceKey, [usize; 3]>>,
}

impl SliceGauges {
    pub(crate) fn new(endpoints_desired: &IntGauge, desired_slices: &IntGauge, slices: &IntGauge) -> Self {
        SliceGauges {
            gauges: [endpoints_desired.clone(), desired_slices.clone(), slices.clone()],
            last: Default::default(),
        }
    }

    /// Records a key's share, `[endpoints desired, slices desired, slices]`; `None` when the
    /// key is gone.
    pub(crate) fn record(&self, key: &portico_controllers::ServiceKey, now: Option<[usize; 3]>) {
        let before = {
            let mut last = crate::lock(&self.last);
            match now {
                Some(v) => last.insert(key.clone(), v),
                None => last.remove(key),
            }
        }
        .unwrap_or_default();
        let now = now.unwrap_or_default();
        for ((gauge, n), b) in self.gauges.iter().zip(now).zip(before) {
            gauge.add(n as i64 - b as i64);
        }
    }
}
