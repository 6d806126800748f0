//! Propagation-failure detection: 401s past the threshold after a rotation are reported
//! once per window (metric, /tokens, log), a healthy rotation is not, a burst outside a
//! rotation is reported the same way, and `on_401 = "refresh"` refreshes early exactly once.

mod support;

use support::*;

fn rotate(dir: &std::path::Path, path: &std::path::Path, value: &str) {
    let tmp = dir.join("next");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A file token `NAME` behind route `NAME` (metrics are process-wide: names are per test).
fn config(name: &str, up: &Upstream, path: &std::path::Path) -> String {
    format!(
        "{LISTEN}\n[[routes]]\nname = \"{name}\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"{name}\"\n\n\
         [tokens.{name}]\nsource = \"file\"\npath = {:?}\noverlap = \"0s\"\npropagation = {{ window = \"60s\", min = 3, ratio = 0.5 }}\n",
        up.url,
        path.display().to_string()
    )
}

async fn token_json(sk: &sidekey::Running, name: &str) -> serde_json::Value {
    let all = get(&client(), &format!("http://{}/tokens", sk.admin_addr)).await.json();
    all.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_the_upstream_refuses_is_reported_once_and_a_healthy_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "value_1").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer value_1");
    let sk = start_proxy(&config("pf", &up, &path)).await;
    let c = client();
    let url = format!("http://{}/r/x", sk.proxy_addr);
    let metrics = || async { get(&client(), &format!("http://{}/metrics", sk.admin_addr)).await.text() };

    // A healthy rotation: the upstream takes the new value.
    up.allow("Bearer value_2");
    rotate(dir.path(), &path, "value_2");
    wait_generation(&sk, "pf", 2).await;
    for _ in 0..10 {
        assert_eq!(get(&c, &url).await.status, 200);
    }
    assert_eq!(metric(&metrics().await, r#"sidekey_propagation_failures_total{token="pf"}"#), 0.0);

    // A rotation the upstream refuses: reported once, however many 401s follow.
    rotate(dir.path(), &path, "value_3");
    wait_generation(&sk, "pf", 3).await;
    for _ in 0..8 {
        assert_eq!(get(&c, &url).await.status, 401, "the client gets the upstream's 401");
    }
    let m = metrics().await;
    assert_eq!(metric(&m, r#"sidekey_propagation_failures_total{token="pf"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, r#"sidekey_upstream_unauthorized_total{route="pf",token="pf"}"#), 8.0);
    let t = token_json(&sk, "pf").await;
    assert_eq!(t["propagation_failures"], 1);
    assert_eq!(t["unauthorized"], 8);
    assert_eq!(t["unauthorized_since_rotation"], 8);
    assert!(!t.to_string().contains("value_3"));
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_burst_outside_a_rotation_is_reported_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "never_accepted").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    let sk = start_proxy(&config("burst", &up, &path)).await;
    let c = client();
    // Two of six below the ratio's threshold (401s must be at least half the requests).
    for _ in 0..2 {
        assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 401);
    }
    assert_eq!(token_json(&sk, "burst").await["propagation_failures"], 0);
    for _ in 0..2 {
        get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await;
    }
    assert_eq!(token_json(&sk, "burst").await["propagation_failures"], 1);
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_401_refresh_refreshes_early_exactly_once_per_window() {
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("value");
    let calls = dir.path().join("calls");
    std::fs::write(&value, "revoked_1").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    let config = format!(
        "{LISTEN}\n[[routes]]\nname = \"early\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"early\"\n\n\
         [tokens.early]\nsource = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo call >> \\\"$1\\\"; cat \\\"$0\\\"\", {:?}, {:?}]\n\
         refresh = \"1h\"\noverlap = \"0s\"\non_401 = \"refresh\"\npropagation = {{ window = \"60s\", min = 3, ratio = 0.5 }}\n",
        up.url,
        value.display().to_string(),
        calls.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let count_calls = || std::fs::read_to_string(&calls).unwrap().lines().count();
    assert_eq!(count_calls(), 1, "the initial load");
    std::fs::write(&value, "revoked_2").unwrap();
    for _ in 0..3 {
        assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 401);
    }
    // The third 401 crossed the threshold: one early refresh, counted as started before that
    // 401 was answered, fetched the next value.
    assert_eq!(token_json(&sk, "early").await["refreshes_started"], 2, "the initial load and one early refresh");
    wait_generation(&sk, "early", 2).await;
    assert_eq!(count_calls(), 2);
    // The new value is refused too: reported again (a new generation), but no second early
    // refresh within the window. A refresh is counted when it starts, before the 401 that
    // started it is answered: right after the requests, any second one shows.
    std::fs::write(&value, "revoked_3").unwrap();
    for _ in 0..6 {
        assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 401);
    }
    let t = token_json(&sk, "early").await;
    assert_eq!(t["refreshes_started"], 2, "a second early refresh within the window: {t}");
    assert_eq!(t["propagation_failures"], 2);
    assert_eq!(count_calls(), 2, "a second early refresh within the window");
    assert_eq!(sk.tokens().get("early").unwrap().current().unwrap().generation, 2);
    sk.shutdown().await;
}
