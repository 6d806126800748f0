//! Prometheus metrics: the process-wide recorder, and per-route handles resolved once.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for request duration: proxy overhead is tens of microseconds, upstreams take
/// milliseconds to seconds.
const DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder once per process and returns its handle. If another
/// recorder was installed first (an embedding program's), metrics go there and `/metrics`
/// renders an empty page.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("sidekey_request_duration_seconds".into()), DURATION_BUCKETS)
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        // Histograms keep every sample until they are folded into their buckets: without this,
        // memory grows with each request until the next scrape (or forever, unscraped).
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("sidekey-metrics".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram memory grows until scraped");
        }
        handle
    })
}

/// Status codes a route can answer, as counter slots (100..=599).
const STATUS_SLOTS: usize = 500;

/// A route's metric handles, resolved at start so the hot path only increments.
pub struct RouteMetrics {
    route: Arc<str>,
    duration: Histogram,
    /// One `sidekey_requests_total{route,status}` counter per status code, created on first use.
    by_status: Box<[OnceLock<Counter>]>,
    unauthorized: Counter,
}

impl RouteMetrics {
    pub fn new(route: &str, token: Option<&str>) -> RouteMetrics {
        let route: Arc<str> = route.into();
        RouteMetrics {
            duration: metrics::histogram!("sidekey_request_duration_seconds", "route" => route.to_string()),
            unauthorized: match token {
                Some(t) => {
                    metrics::counter!("sidekey_upstream_unauthorized_total", "route" => route.to_string(), "token" => t.to_owned())
                }
                None => Counter::noop(),
            },
            by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            route,
        }
    }

    /// Counts an upstream 401 that the client did not get (a retry replaced it).
    pub fn count_unauthorized(&self) {
        self.unauthorized.increment(1);
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.record(seconds);
        let slot = (status as usize).wrapping_sub(100);
        if let Some(cell) = self.by_status.get(slot) {
            cell.get_or_init(|| {
                metrics::counter!("sidekey_requests_total", "route" => self.route.to_string(), "status" => status.to_string())
            })
            .increment(1);
        }
        // A no-op counter for requests that matched no route (there is no token to name).
        if status == 401 {
            self.unauthorized.increment(1);
        }
    }
}
