//! The shipped Prometheus alert rules and config pass `promtool check`, and the rules' unit
//! tests (`examples/prometheus/alerts_test.yml`: a firing and a quiet case per alert) pass.

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("promtool").args(args).current_dir(root).output().unwrap_or_else(|e| {
        panic!("promtool not found ({e}): run tests/servers/install.sh (Debian's prometheus package)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_scrape_config_are_valid() {
    assert!(promtool(&["check", "rules", "examples/prometheus/alerts.yml"]).contains("SUCCESS"));
    assert!(promtool(&["check", "config", "examples/prometheus/prometheus.yml"]).contains("SUCCESS"));
}

#[test]
fn every_alert_passes_its_unit_tests() {
    let out = promtool(&["test", "rules", "examples/prometheus/alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_grafana_dashboard_is_json_over_sidekey_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/grafana/sidekey.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for metric in [
        "sidekey_requests_total",
        "sidekey_upstream_unauthorized_total",
        "sidekey_propagation_failures_total",
        "sidekey_token_ready",
    ] {
        assert!(text.contains(metric), "the dashboard does not chart {metric}");
    }
}
