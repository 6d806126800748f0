//! Prometheus metrics: the process-wide recorder, and per-route handles resolved once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::Counter;
use metrics_exporter_prometheus::formatting::{write_metric_line, write_type_line};
use metrics_exporter_prometheus::{LabelSet, PrometheusBuilder, PrometheusHandle};

/// Upper bounds of the request-duration buckets, in nanoseconds (`le` 0.0001 s to 30 s): proxy
/// overhead is tens of microseconds, upstreams take milliseconds to seconds.
const DURATION_BOUNDS_NS: [u64; 17] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

const DURATION: &str = "sidekey_request_duration_seconds";

/// Installs the Prometheus recorder once per process and returns its handle. If another
/// recorder was installed first (an embedding program's), metrics go there and `/metrics`
/// renders only the request durations.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows request durations only");
        }
        handle
    })
}

/// The `/metrics` page: the recorder's metrics, then `sidekey_request_duration_seconds`.
pub fn render() -> String {
    let mut text = install().render();
    let all = durations().lock().unwrap_or_else(|e| e.into_inner());
    if !all.is_empty() {
        write_type_line(&mut text, DURATION, None, None, "histogram");
    }
    for d in all.iter() {
        d.render(&mut text);
    }
    text
}

/// Every route's durations, by name, for the life of the process: a route a reload builds again
/// counts on where it was (as the recorder's own metrics do).
fn durations() -> &'static Mutex<Vec<Arc<Durations>>> {
    static ALL: OnceLock<Mutex<Vec<Arc<Durations>>>> = OnceLock::new();
    ALL.get_or_init(Mutex::default)
}

/// `sidekey_request_duration_seconds{route}`, counted straight into its buckets. Not the
/// exporter's histogram: that keeps every sample (a value and the time it was taken, 24 bytes)
/// until its upkeep folds them into buckets, 2 MiB of sidekey's peak RSS at 35 000 requests a
/// second in the load harness with a fold every 5 s.
struct Durations {
    route: Box<str>,
    /// Requests per bucket (not cumulative); the last one is past every bound (`+Inf`).
    counts: [AtomicU64; DURATION_BOUNDS_NS.len() + 1],
    /// The sum of all durations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Durations {
    /// The route's durations, created on first use.
    fn for_route(route: &str) -> Arc<Durations> {
        let mut all = durations().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = all.iter().find(|d| &*d.route == route) {
            return d.clone();
        }
        let d = Arc::new(Durations {
            route: route.into(),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        });
        all.push(d.clone());
        d
    }

    #[inline]
    fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Appends this route's `_bucket` lines (cumulative), `_sum` and `_count`.
    fn render(&self, text: &mut String) {
        let key = metrics::Key::from_parts(DURATION, vec![metrics::Label::new("route", self.route.to_string())]);
        let labels = LabelSet::from_key_and_global(&key, &Default::default());
        let mut total = 0u64;
        for (bound, count) in DURATION_BOUNDS_NS.iter().zip(&self.counts) {
            total += count.load(Ordering::Relaxed);
            write_metric_line(text, DURATION, Some("bucket"), &labels, Some(("le", *bound as f64 / 1e9)), total, None);
        }
        total += self.counts[DURATION_BOUNDS_NS.len()].load(Ordering::Relaxed);
        write_metric_line(text, DURATION, Some("bucket"), &labels, Some(("le", "+Inf")), total, None);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        write_metric_line::<&str, f64>(text, DURATION, Some("sum"), &labels, None, sum, None);
        write_metric_line::<&str, u64>(text, DURATION, Some("count"), &labels, None, total, None);
    }
}

/// Status codes a route can answer, as counter slots (100..=599).
const STATUS_SLOTS: usize = 500;

/// A route's metric handles, resolved at start so the hot path only increments.
pub struct RouteMetrics {
    route: Arc<str>,
    duration: Arc<Durations>,
    /// One `sidekey_requests_total{route,status}` counter per status code, created on first use.
    by_status: Box<[OnceLock<Counter>]>,
    unauthorized: Counter,
}

impl RouteMetrics {
    pub fn new(route: &str, token: Option<&str>) -> RouteMetrics {
        let route: Arc<str> = route.into();
        RouteMetrics {
            duration: Durations::for_route(&route),
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
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.duration.record(elapsed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &str, route: &str) -> Vec<String> {
        let needle = format!("route=\"{route}\"");
        text.lines().filter(|l| l.starts_with(DURATION) && l.contains(&needle)).map(str::to_owned).collect()
    }

    #[test]
    fn durations_fall_into_cumulative_buckets_with_sum_and_count() {
        let d = Durations::for_route("metrics-unit-a");
        d.record(Duration::from_micros(40)); // below the first bound
        d.record(Duration::from_micros(100)); // on the first bound: le is inclusive
        d.record(Duration::from_nanos(100_001)); // just past it
        d.record(Duration::from_millis(3)); // le 0.005
        d.record(Duration::from_secs(31)); // past every bound
        let mut text = String::new();
        d.render(&mut text);
        let lines = lines_of(&text, "metrics-unit-a");
        let at = |le: &str| {
            let prefix = format!("{DURATION}_bucket{{route=\"metrics-unit-a\",le=\"{le}\"}} ");
            let line = lines.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no le={le} in {text}"));
            line[prefix.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(at("0.0001"), 2);
        assert_eq!(at("0.00025"), 3);
        assert_eq!(at("0.0025"), 3);
        assert_eq!(at("0.005"), 4);
        assert_eq!(at("30"), 4);
        assert_eq!(at("+Inf"), 5);
        assert_eq!(lines.len(), DURATION_BOUNDS_NS.len() + 3, "{text}");
        assert!(lines.contains(&format!("{DURATION}_count{{route=\"metrics-unit-a\"}} 5")), "{text}");
        assert!(lines.contains(&format!("{DURATION}_sum{{route=\"metrics-unit-a\"}} 31.003240001")), "{text}");
    }

    #[test]
    fn a_route_built_again_counts_on_and_the_page_has_one_type_line() {
        let first = RouteMetrics::new("metrics-unit-b", None);
        first.record(200, Duration::from_millis(1));
        drop(first);
        let again = RouteMetrics::new("metrics-unit-b", None);
        again.record(200, Duration::from_millis(1));
        let text = render();
        assert!(text.contains(&format!("{DURATION}_count{{route=\"metrics-unit-b\"}} 2")), "{text}");
        assert_eq!(text.matches(&format!("# TYPE {DURATION} histogram")).count(), 1, "{text}");
    }
}
