//! Least privilege per route: allow rules (with traversal and encoding tricks), a token-bucket
//! rate, an in-flight cap; refusals forward nothing and are counted.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use support::*;

fn config(up: &Upstream, var: &str, route: &str, extra: &str) -> String {
    format!(
        "{LISTEN}\n[[routes]]\nname = \"{route}\"\nprefix = \"/gh\"\nupstream = \"{}\"\ntoken = \"t\"\n{extra}\n\n[tokens.t]\nsource = \"env\"\nvar = \"{var}\"\n",
        up.url
    )
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_rules_forward_only_what_they_name() {
    std::env::set_var("SK_LP_ALLOW", "allow_token");
    let up = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let extra = format!(
        "allow = [\"GET /repos/**\", \"POST /repos/*/issues\"]\n\n[audit]\npath = {:?}\nsummary_interval = \"1h\"",
        log.display().to_string()
    );
    let sk = start_proxy(&config(&up, "SK_LP_ALLOW", "lp_allow", &extra)).await;
    let base = format!("http://{}", sk.proxy_addr);
    let raw_get = |method: &'static str, path: &'static str| {
        let addr = sk.proxy_addr;
        async move {
            raw(
                addr,
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
        }
    };
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("GET", "/gh/repos/a/b", 200, Some("/repos/a/b")),
        ("GET", "/gh/repos", 200, Some("/repos")),
        ("POST", "/gh/repos/a/issues", 200, Some("/repos/a/issues")),
        ("GET", "/gh/rep%6fs/x", 200, Some("/rep%6fs/x")),
        ("POST", "/gh/repos/a/b/issues", 403, None),
        ("DELETE", "/gh/repos/a", 403, None),
        ("GET", "/gh/user", 403, None),
        // Traversal and encodings never slip past a rule.
        ("GET", "/gh/repos/../admin", 403, None),
        ("GET", "/gh/repos/%2e%2e/admin", 400, None),
        // An encoded slash in a segment: 400 on a route with `allow` (an upstream may decode it).
        ("GET", "/gh/repos%2Fx", 400, None),
        ("GET", "/gh//repos/x", 403, None),
        ("GET", "/gh/reposx/y", 403, None),
    ];
    for (method, path, status, seen) in cases {
        let before = up.seen().len();
        let resp = raw_get(method, path).await;
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{method} {path}: {resp}");
        match seen {
            Some(p) => assert_eq!(up.last().path, *p, "{method} {path}"),
            None => assert_eq!(up.seen().len(), before, "{method} {path} reached the upstream"),
        }
        if *status == 403 {
            assert!(resp.contains("\"not_allowed\""), "{resp}");
        }
    }
    let m = get(&client(), &format!("http://{}/metrics", sk.admin_addr)).await.text();
    assert_eq!(metric(&m, r#"sidekey_requests_denied_total{route="lp_allow",reason="not_allowed"}"#), 6, "{m}");
    let routes = get(&client(), &format!("http://{}/routes", sk.admin_addr)).await.json();
    // The encoded slash's 400 is no policy denial.
    assert_eq!(routes[0]["denied_not_allowed"], 6);
    let _ = base;
    sk.shutdown().await;
    // The audit log's usage summary carries the denials.
    let text = std::fs::read_to_string(&log).unwrap();
    let usage: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "usage")
        .expect("a usage summary");
    assert_eq!(usage["denied_not_allowed"], 6);
    assert_eq!(usage["route"], "lp_allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_holds_the_upstream_to_the_bucket_under_a_burst() {
    std::env::set_var("SK_LP_RATE", "rate_token");
    let up = Upstream::plain().await;
    let sk = start_proxy(&config(&up, "SK_LP_RATE", "lp_rate", "rate = \"20/s\"\nburst = 5")).await;
    let (ok, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (ok, limited, addr) = (ok.clone(), limited.clone(), sk.proxy_addr);
        clients.push(tokio::spawn(async move {
            let c = client();
            // Until 45 got through: 5 from the burst, then 40 from refills (about 2 s at 20/s).
            while ok.load(Ordering::Relaxed) < 45 {
                let a = get(&c, &format!("http://{addr}/gh/x")).await;
                match a.status.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        assert!(a.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
                        assert_eq!(a.json()["error"], "rate_limited");
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    s => panic!("unexpected {s}"),
                };
            }
        }));
    }
    for c in clients {
        bounded("the clients", c).await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let forwarded = up.seen().len() as f64;
    println!("rate 20/s burst 5: {forwarded} forwarded in {elapsed:.2} s, {} refused", limited.load(Ordering::Relaxed));
    // Count-based: whatever the run's length, no more than the bucket allows went upstream.
    assert!(forwarded <= 5.0 + 20.0 * elapsed + 1.0, "{forwarded} forwarded in {elapsed} s");
    assert_eq!(forwarded as u64, ok.load(Ordering::Relaxed));
    assert!(limited.load(Ordering::Relaxed) > 0, "four clients in a loop were never limited");
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_caps_concurrent_upstream_requests() {
    std::env::set_var("SK_LP_INFLIGHT", "inflight_token");
    let up = Upstream::plain().await;
    let sk = start_proxy(&config(&up, "SK_LP_INFLIGHT", "lp_inflight", "max_in_flight = 2")).await;
    let addr = sk.proxy_addr;
    let held: Vec<_> =
        (0..2).map(|_| tokio::spawn(async move { get(&client(), &format!("http://{addr}/gh/hold")).await })).collect();
    up.wait_held().await;
    up.wait_held().await;
    // Two are in flight: more are refused at once, not queued.
    for _ in 0..3 {
        let a = get(&client(), &format!("http://{addr}/gh/x")).await;
        assert_eq!(a.status, 429);
        assert_eq!(a.json()["error"], "rate_limited");
    }
    assert_eq!(up.seen().len(), 2, "nothing else reached the upstream");
    up.release();
    for h in held {
        assert_eq!(bounded("a held request", h).await.unwrap().status, 200);
    }
    // The slots are free again.
    assert_eq!(get(&client(), &format!("http://{addr}/gh/after")).await.status, 200);
    let m = get(&client(), &format!("http://{}/metrics", sk.admin_addr)).await.text();
    assert_eq!(metric(&m, r#"sidekey_requests_denied_total{route="lp_inflight",reason="rate_limited"}"#), 3);
    sk.shutdown().await;
}

#[test]
fn check_validates_rules_and_warns_about_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sidekey.toml");
    std::fs::write(
        &p,
        "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://a.example\"\ntoken = \"t\"\n\
         allow = [\"GET /ok/**\", \"FETCH /x\", \"GET /a*b\"]\nrate = \"0/s\"\nmax_in_flight = 0\n\n[tokens.t]\nsource = \"env\"\nvar = \"X\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey")).args(["check", "-c"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["6: routes[0].allow[1]", "6: routes[0].allow[2]", "7: routes[0].rate", "8: routes[0].max_in_flight"] {
        assert!(err.contains(key), "no {key:?} in:\n{err}");
    }
    std::fs::write(
        &p,
        "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://a.example\"\ntoken = \"t\"\n\
         allow = [\"GET /ok/**\", \"GET /a/../b\"]\n\n[tokens.t]\nsource = \"env\"\nvar = \"X\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey")).args(["check", "-c"]).arg(&p).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning:") && err.contains("routes[0].allow[1]") && err.contains("never matches"), "{err}");
}
