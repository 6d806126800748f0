//! A real Prometheus server (Debian's package) scrapes sidekey's admin port with the alert
//! rules of `examples/prometheus/alerts.yml`; a rotation the upstream refuses shows up as
//! `sidekey_propagation_failures_total` and the propagation alert firing, read through
//! Prometheus' own HTTP API. The admin API requires a token here, which Prometheus sends from
//! a credentials file, as the Kubernetes example's PodMonitor does.

mod support;

use support::servers::Prometheus;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_propagation_failure_and_fires_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "prom_value_1").unwrap();
    let admin_token = dir.path().join("admin-token");
    std::fs::write(&admin_token, "prom-admin-token\n").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer prom_value_1");
    let config = format!(
        "{LISTEN}\n[admin]\ntoken = {{ file = {:?} }}\n[[routes]]\nname = \"promroute\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"promtok\"\n\n\
         [tokens.promtok]\nsource = \"file\"\npath = {:?}\noverlap = \"0s\"\npropagation = {{ min = 3, ratio = 0.5 }}\n",
        admin_token.display().to_string(),
        up.url,
        path.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let unauthenticated = get(&client(), &format!("http://{}/metrics", sk.admin_addr)).await;
    assert_eq!(unauthenticated.status, 401, "the admin token is required for /metrics");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let alerts = root.join("examples/prometheus/alerts.yml");
    let prom = Prometheus::start(sk.admin_addr, &alerts, Some(&admin_token)).await;
    let query = "/api/v1/query?query=sidekey_propagation_failures_total%7Btoken%3D%22promtok%22%7D";
    // Prometheus has the series at zero before anything happens.
    prom.until("the propagation counter at 0", query, |j| j["data"]["result"][0]["value"][1] == "0").await;

    std::fs::write(dir.path().join("next"), "prom_value_2").unwrap();
    std::fs::rename(dir.path().join("next"), &path).unwrap();
    wait_generation(&sk, "promtok", 2).await;
    let c = client();
    for _ in 0..4 {
        assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 401);
    }
    prom.until("the propagation failure", query, |j| j["data"]["result"][0]["value"][1] == "1").await;
    // The request-duration histogram (rendered by sidekey itself, not the exporter) parses as
    // one: its count and its +Inf bucket both hold the four requests.
    for series in [
        "sidekey_request_duration_seconds_count%7Broute%3D%22promroute%22%7D",
        "sidekey_request_duration_seconds_bucket%7Broute%3D%22promroute%22%2Cle%3D%22%2BInf%22%7D",
    ] {
        let q = format!("/api/v1/query?query={series}");
        prom.until(&format!("{series} at 4"), &q, |j| j["data"]["result"][0]["value"][1] == "4").await;
    }
    let alerts = prom
        .until("the SidekeyPropagationFailure alert firing", "/api/v1/alerts", |j| {
            j["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a["labels"]["alertname"] == "SidekeyPropagationFailure"
                        && a["labels"]["token"] == "promtok"
                        && a["state"] == "firing"
                })
            })
        })
        .await;
    assert!(!alerts.to_string().contains("prom_value_"), "a token value reached an alert");

    // promtool's own lint of the page: HELP on every family, names and types as Prometheus
    // wants them.
    let page = send(
        &c,
        http::Request::get(format!("http://{}/metrics", sk.admin_addr))
            .header("Authorization", "Bearer prom-admin-token")
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await
    .text();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tests/servers/install.sh installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), page.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{page}");
    for series in [
        format!("sidekey_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "sidekey_config_reloads_total{result=\"success\"} 0".to_owned(),
        "sidekey_upstream_retries_total{route=\"promroute\",token=\"promtok\",with=\"previous\",outcome=\"success\"} 0"
            .to_owned(),
        "sidekey_connect_total{result=\"refused\"} 0".to_owned(),
    ] {
        assert!(page.lines().any(|l| l == series), "{series} missing from:\n{page}");
    }
    for family in
        ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"]
    {
        let q = format!("/api/v1/query?query={family}");
        prom.until(&format!("{family} scraped"), &q, |j| j["data"]["result"][0]["value"][1].is_string()).await;
    }
    sk.shutdown().await;
}
