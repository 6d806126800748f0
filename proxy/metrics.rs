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

pub const DURATION: &str = "sidekey_request_duration_seconds";

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
        describe();
        metrics::gauge!("sidekey_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for result in ["success", "failure"] {
            metrics::counter!("sidekey_config_reloads_total", "result" => result).increment(0);
        }
        for result in ["intercepted", "passthrough", "refused", "failed"] {
            metrics::counter!("sidekey_connect_total", "result" => result).increment(0);
        }
        handle
    })
}

/// Every family the recorder renders, with its HELP text (the `# HELP` line Prometheus and
/// `promtool check metrics` want); `sidekey_request_duration_seconds` and the process metrics
/// are written by [`render`] with theirs.
pub const FAMILIES: &[(&str, &str)] = &[
    ("sidekey_build_info", "sidekey's version, as a label; always 1"),
    ("sidekey_requests_total", "Requests answered, by route and status (route \"unmatched\": no route matched)"),
    ("sidekey_requests_denied_total", "Requests refused by a route's policy, by reason (not_allowed, rate_limited)"),
    ("sidekey_upstream_unauthorized_total", "Upstream 401 answers, by route and token"),
    ("sidekey_upstream_retries_total", "401s right after a rotation retried once, by the value used and the outcome"),
    (
        "sidekey_propagation_failures_total",
        "Rotations whose new value the upstream kept refusing (401s past the threshold)",
    ),
    ("sidekey_token_rotations_total", "Token refreshes, by result (success, failure, rejected)"),
    ("sidekey_token_logins_total", "Workload-identity logins, by result (success, failure); renewals are not logins"),
    ("sidekey_token_generation", "The current value's generation (0: none loaded yet)"),
    ("sidekey_token_ready", "1 when the token has a usable value, else 0"),
    ("sidekey_token_expiry_timestamp_seconds", "When the current value expires, Unix seconds"),
    ("sidekey_token_last_rotation_timestamp_seconds", "When the value last changed, Unix seconds"),
    ("sidekey_token_refresh_failures", "Refresh failures in a row"),
    ("sidekey_token_refresh_backoff_seconds", "The wait before the next refresh attempt after failures"),
    ("sidekey_token_next_refresh_timestamp_seconds", "When the token is next refreshed, Unix seconds"),
    ("sidekey_open_connections", "Open client connections, by listener (proxy, admin)"),
    ("sidekey_connect_total", "CONNECT requests, by result (intercepted, passthrough, refused, failed)"),
    ("sidekey_intercept_leaf_certs_minted_total", "Leaf certificates minted for intercepted hosts"),
    ("sidekey_config_reloads_total", "Config reloads, by result (success, failure)"),
];

/// HELP of the families [`render`] writes itself.
pub const DURATION_HELP: &str = "Time from a request's arrival to its answer's head, by route";

fn describe() {
    for (name, help) in FAMILIES {
        let (name, help) = (*name, *help);
        if name.ends_with("_total") {
            metrics::describe_counter!(name, help);
        } else {
            metrics::describe_gauge!(name, help);
        }
    }
}

/// The `/metrics` page: the recorder's metrics, then `sidekey_request_duration_seconds`.
pub fn render() -> String {
    let mut text = install().render();
    let all = durations().lock().unwrap_or_else(|e| e.into_inner());
    if !all.is_empty() {
        metrics_exporter_prometheus::formatting::write_help_line(&mut text, DURATION, None, None, DURATION_HELP);
        write_type_line(&mut text, DURATION, None, None, "histogram");
    }
    for d in all.iter() {
        d.render(&mut text);
    }
    drop(all);
    crate::process_metrics::render(&mut text);
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
/// until its upkeep folds them into buckets, so its memory grows with the request rate.
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
