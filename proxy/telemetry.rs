//! Structured logging through tracing: `RUST_LOG`-style filters, pretty or JSON lines on stderr.
//!
//! Pretty lines are coloured only when stderr is a terminal and `NO_COLOR` is not set (so a
//! file or a pipe gets no escape codes). JSON lines are one object each, written here rather
//! than by tracing-subscriber's formatter so that a list logged with `?` (`kept = ?names`) is a
//! JSON array, not a string holding one.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Whether pretty lines get colour: on a terminal, unless `NO_COLOR` is set to anything
/// non-empty (<https://no-color.org>).
pub fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber; `RUST_LOG` (default `info`) filters it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,notify=warn"));
    // aws-sigv4 traces the request it signs and the signing parameters, the access key id among
    // them: never logged, whatever RUST_LOG says.
    let filter = filter.add_directive("aws_sigv4=off".parse().expect("a valid directive"));
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(Json).try_init(),
    };
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message` and the event's fields.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writeln!(writer, "{}", Value::Object(json_fields(event)))
    }
}

/// The JSON object of one event.
pub fn json_fields(event: &Event<'_>) -> Map<String, Value> {
    let meta = event.metadata();
    let mut map = Map::new();
    map.insert("timestamp".into(), humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string().into());
    map.insert("level".into(), meta.level().as_str().into());
    map.insert("target".into(), meta.target().into());
    event.record(&mut Fields(&mut map));
    map
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A list logged with `?` (`Vec<String>`, `&[&str]`): its Debug text is a JSON array of
        // strings for the names sidekey logs (letters, digits, `-`, `_`, `.`), kept as one.
        // The message and values logged with `%` are never taken apart.
        if field.name() != "message" && text.starts_with('[') {
            if let Ok(list @ Value::Array(_)) = serde_json::from_str::<Value>(&text) {
                if list.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                    self.0.insert(field.name().into(), list);
                    return;
                }
            }
        }
        self.0.insert(field.name().into(), text.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    struct Capture(Arc<Mutex<Vec<Map<String, Value>>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(json_fields(event));
        }
    }

    #[test]
    fn lists_are_arrays_and_the_rest_keeps_its_type() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let kept = vec!["gh".to_owned(), "ci".to_owned()];
            let none: Vec<String> = Vec::new();
            tracing::info!(kept = ?kept, removed = ?none, routes = 2, error = %"[intercept]: bad", "config reloaded");
        });
        let line = &seen.lock().unwrap()[0];
        assert_eq!(line["kept"], serde_json::json!(["gh", "ci"]));
        assert_eq!(line["removed"], serde_json::json!([]));
        assert_eq!(line["routes"], 2);
        assert_eq!(line["error"], "[intercept]: bad");
        assert_eq!(line["message"], "config reloaded");
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
    }
}
