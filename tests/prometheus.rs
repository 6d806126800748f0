//! A real Prometheus server (Debian's package) scrapes sidekey's admin port with the alert
//! rules of `examples/prometheus/alerts.yml`; a rotation the upstream refuses shows up as
//! `sidekey_propagation_failures_total` and the propagation alert firing, read through
//! Prometheus' own HTTP API.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _work: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Prometheus {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("tests/servers/prometheus/start.sh");
        let rules = root.join("examples/prometheus/alerts.yml");
        assert!(
            Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success()),
            "prometheus is not installed: run tests/servers/install.sh"
        );
        let work = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut child = Command::new("bash")
                .arg(&script)
                .arg(port.to_string())
                .arg(target.to_string())
                .arg(&rules)
                .arg(work.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let c = client();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken
                }
                let req = http::Request::get(format!("http://{addr}/-/ready")).body(Default::default()).unwrap();
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), c.request(req)).await {
                    if r.status() == 200 {
                        return Prometheus { child, addr, _work: work };
                    }
                }
                assert!(Instant::now() < deadline, "prometheus did not become ready within 30 s");
                // An external process's readiness has no signal but its health endpoint.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus could not bind a free port in 5 tries");
    }

    /// Polls `path` on Prometheus' API until `done` holds for its JSON (bounded).
    async fn until(&self, what: &str, path: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let c = client();
        loop {
            let j = get(&c, &format!("http://{}{path}", self.addr)).await.json();
            if done(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "{what} not seen through Prometheus within 60 s; last answer: {j}");
            // Prometheus scrapes and evaluates on its own clock: its API is the only signal.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_propagation_failure_and_fires_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "prom_value_1").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer prom_value_1");
    let config = format!(
        "{LISTEN}\n[[routes]]\nname = \"promroute\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"promtok\"\n\n\
         [tokens.promtok]\nsource = \"file\"\npath = {:?}\noverlap = \"0s\"\npropagation = {{ min = 3, ratio = 0.5 }}\n",
        up.url,
        path.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let prom = Prometheus::start(sk.admin_addr).await;
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
    sk.shutdown().await;
}
