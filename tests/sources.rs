//! Token sources against real servers (oidc-provider, OpenBao) and real processes: refresh
//! before expiry, failures that keep the last good value, expiry, recovery, validation,
//! collapsed concurrent refreshes. Every wait is bounded; none asserts a duration.

mod support;

use std::time::{Duration, SystemTime};

use support::servers::{Bao, Oidc, BAO_ROOT};
use support::*;

fn route(name: &str, token: &str, up: &Upstream) -> String {
    format!("[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nupstream = \"{}\"\ntoken = \"{token}\"\n", up.url)
}

fn is_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && s.len() > 40
}

async fn bearer_seen(c: &TestClient, sk: &sidekey::Running, up: &Upstream, route: &str, tag: &str) -> String {
    let a = get(c, &format!("http://{}/{route}/{tag}", sk.proxy_addr)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = up.find(&format!("/{tag}"));
    seen.headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_refreshed_before_expiry_against_a_real_provider() {
    std::env::set_var("SK_OIDC_SECRET_BASIC", "basic-secret-1");
    std::env::set_var("SK_OIDC_SECRET_POST", "post-secret+2%");
    let oidc = Oidc::start(
        r#"[{"client_id":"svc-basic","client_secret":"basic-secret-1"},
            {"client_id":"svc-post","client_secret":"post-secret+2%","token_endpoint_auth_method":"client_secret_post"}]"#,
        3,
        0,
    );
    let up = Upstream::plain().await;
    let config = format!(
        r#"{LISTEN}
{}
{}
[tokens.basic]
source = "oauth2"
token_url = "{url}"
client_id = "svc-basic"
client_secret = {{ env = "SK_OIDC_SECRET_BASIC" }}
scope = "read"

[tokens.post]
source = "oauth2"
token_url = "{url}"
client_id = "svc-post"
client_secret = {{ env = "SK_OIDC_SECRET_POST" }}
auth_method = "client_secret_post"
params = {{ resource = "urn:sidekey:test" }}
"#,
        route("b", "basic", &up),
        route("p", "post", &up),
        url = oidc.token_url
    );
    let sk = start_proxy(&config).await;
    let c = client();
    // Every generation of each token as it is published: (generation, loaded_at, expires_at).
    let watchers: Vec<_> = ["basic", "post"]
        .into_iter()
        .map(|name| {
            let token = sk.tokens().get(name).unwrap().clone();
            tokio::spawn(async move {
                let mut rx = token.subscribe();
                let mut seen = Vec::new();
                loop {
                    if let Some(v) = token.current() {
                        if seen.last().is_none_or(|&(g, _, _)| g != v.generation) {
                            seen.push((v.generation, v.loaded_at, v.expires_at));
                        }
                    }
                    if seen.last().is_some_and(|&(g, _, _)| g >= 4) || rx.changed().await.is_err() {
                        return seen;
                    }
                }
            })
        })
        .collect();
    // Steady requests on both routes the whole time: a token that expired before the next one
    // came would answer 503.
    let steady = {
        let (proxy, c) = (sk.proxy_addr, c.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    for route in ["b", "p"] {
                        let a = get(&c, &format!("http://{proxy}/{route}/steady")).await;
                        *statuses.entry(a.status.as_u16()).or_default() += 1;
                    }
                }
                statuses
            })
        };
        (stop, task)
    };
    let mut seen: std::collections::HashMap<&str, std::collections::HashSet<String>> = Default::default();
    for generation in 1..=4u64 {
        for (name, route) in [("basic", "b"), ("post", "p")] {
            // Lifetime 3 s, refreshed at 80 % less jitter: each new generation comes before
            // the last one expires, so no request ever waits for a token.
            wait_generation(&sk, name, generation).await;
            let token = bearer_seen(&c, &sk, &up, route, &format!("{name}-{generation}")).await;
            assert!(is_jwt(&token), "{token}");
            seen.entry(name).or_default().insert(token);
        }
    }
    for (name, tokens) in &seen {
        // The two tokens are waited for in turn, so one may skip a generation between looks.
        assert!(tokens.len() >= 3, "{name}: only {} distinct tokens over 4 generations", tokens.len());
    }
    // Refreshed ahead of expiry: each generation was loaded before the one it replaced expired.
    for (name, watcher) in ["basic", "post"].into_iter().zip(watchers) {
        let generations = bounded("the generations of a token", watcher).await.unwrap();
        let pairs: Vec<_> = generations.windows(2).filter(|w| w[1].0 == w[0].0 + 1).collect();
        assert!(pairs.len() >= 3, "{name}: too few consecutive generations seen: {generations:?}");
        for w in pairs {
            let (previous, next) = (&w[0], &w[1]);
            let expires = previous.2.unwrap_or_else(|| panic!("{name}: generation {} has no expiry", previous.0));
            assert!(
                next.1 < expires,
                "{name}: generation {} loaded at {:?}, after generation {} expired at {expires:?}",
                next.0,
                next.1,
                previous.0
            );
        }
    }
    let (stop, task) = steady;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = bounded("the steady requests to stop", task).await.unwrap();
    assert_eq!(statuses.keys().collect::<Vec<_>>(), [&200], "steady requests answered other than 200: {statuses:?}");
    let tokens = get(&c, &format!("http://{}/tokens", sk.admin_addr)).await;
    for t in tokens.json().as_array().unwrap() {
        assert_eq!(t["source"], "oauth2");
        assert_eq!(t["state"], "ready");
        assert!(t["expires_at"].is_string(), "{t}");
        assert!(t["generation"].as_u64().unwrap() >= 4);
    }
    for secret in ["basic-secret-1", "post-secret+2%", "eyJ"] {
        assert!(!tokens.text().contains(secret), "a secret reached /tokens");
    }
    let metrics = get(&c, &format!("http://{}/metrics", sk.admin_addr)).await.text();
    assert!(metrics.contains(r#"sidekey_token_rotations_total{token="basic",result="success"}"#), "{metrics}");
    assert!(metrics.contains(r#"sidekey_token_expiry_timestamp_seconds{token="post"}"#));
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_gets_the_endpoint_error_and_never_the_secret() {
    std::env::set_var("SK_OIDC_WRONG_SECRET", "the-wrong-secret-value");
    let oidc = Oidc::start(r#"[{"client_id":"svc","client_secret":"the-right-secret"}]"#, 60, 0);
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}\n{}\n[tokens.t]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"svc\"\nclient_secret = {{ env = \"SK_OIDC_WRONG_SECRET\" }}\n",
        route("r", "t", &up),
        oidc.token_url
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let tokens = get(&c, &format!("http://{}/tokens", sk.admin_addr)).await;
    let err = tokens.json()[0]["last_error"].as_str().unwrap().to_owned();
    assert!(err.contains("401") && err.contains("invalid_client"), "{err}");
    assert!(!tokens.text().contains("the-wrong-secret-value"));
    let a = get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "token_unavailable");
    assert!(up.seen().is_empty());
    assert_eq!(get(&c, &format!("http://{}/readyz", sk.admin_addr)).await.status, 503);
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_down_keeps_the_last_token_until_it_expires_then_recovers() {
    std::env::set_var("SK_OIDC_DOWN_SECRET", "down-secret");
    let clients = r#"[{"client_id":"svc","client_secret":"down-secret"}]"#;
    let oidc = Oidc::start(clients, 4, 0);
    let port = oidc.port;
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}\n{}\n[tokens.t]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"svc\"\nclient_secret = {{ env = \"SK_OIDC_DOWN_SECRET\" }}\n",
        route("r", "t", &up),
        oidc.token_url
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let admin = format!("http://{}", sk.admin_addr);
    let first = sk.tokens().get("t").unwrap().current().expect("loaded");
    let expires_at = first.expires_at.expect("the provider gives expires_in");
    let token1 = bearer_seen(&c, &sk, &up, "r", "before").await;

    oidc.stop();
    let r = post(&c, &format!("{admin}/tokens/t/refresh")).await;
    assert_eq!(r.json()["result"], "failed");
    assert_eq!(r.json()["generation"], 1);
    let metrics = get(&c, &format!("{admin}/metrics")).await.text();
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{token=\"t\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(gauge("sidekey_token_refresh_failures") >= 1.0);
    assert!(gauge("sidekey_token_refresh_backoff_seconds") > 0.0);
    // Still served with the last good token while it is valid (the check holds whatever the
    // machine's speed: a 503 is only right once the token has expired).
    let a = get(&c, &format!("http://{}/r/still", sk.proxy_addr)).await;
    if a.status == 200 {
        assert_eq!(up.find("/still").headers["authorization"], format!("Bearer {token1}").as_str());
    } else {
        assert_eq!(a.status, 503);
        assert!(SystemTime::now() >= expires_at, "503 while the last good token was still valid");
    }

    // Past its expiry, with the endpoint still down: 503 and not ready.
    let wait = expires_at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(50);
    tokio::time::sleep(wait).await; // waiting for the clock itself, not for another task
    let a = get(&c, &format!("http://{}/r/expired", sk.proxy_addr)).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["token"], "t");
    assert_eq!(get(&c, &format!("{admin}/readyz")).await.status, 503);
    assert_eq!(get(&c, &format!("{admin}/tokens")).await.json()[0]["state"], "expired");

    // The endpoint returns on the same port: the backoff schedule recovers by itself.
    let _oidc = Oidc::start(clients, 4, port);
    wait_generation(&sk, "t", 2).await;
    let token2 = bearer_seen(&c, &sk, &up, "r", "after").await;
    assert_ne!(token1, token2);
    assert_eq!(get(&c, &format!("{admin}/readyz")).await.status, 200);
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_collapse_into_one_fetch() {
    std::env::set_var("SK_OIDC_COLLAPSE_SECRET", "collapse-secret");
    let oidc = Oidc::start(r#"[{"client_id":"svc","client_secret":"collapse-secret"}]"#, 60, 0);
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}\n{}\n[tokens.t]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"svc\"\nclient_secret = {{ env = \"SK_OIDC_COLLAPSE_SECRET\" }}\n",
        route("r", "t", &up),
        oidc.token_url
    );
    let sk = start_proxy(&config).await;
    let token = sk.tokens().get("t").unwrap().clone();
    let before = oidc.token_requests().await;
    let outcomes = futures_util::future::join_all((0..8).map(|_| token.refresh())).await;
    assert_eq!(oidc.token_requests().await, before + 1, "eight triggers, one fetch");
    assert!(outcomes.iter().all(|o| o == &outcomes[0]), "{outcomes:?}");
    assert_eq!(outcomes[0], sidekey::token::Refreshed::Rotated { generation: 2 });
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_keeps_the_current_token_when_a_fresh_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    std::fs::write(&file, "good_one\n").unwrap();
    let up = Upstream::plain().await;
    up.allow("Bearer good_one");
    let config = format!(
        "{LISTEN}\n{}\n[tokens.v]\nsource = \"exec\"\ncommand = [\"cat\", {:?}]\nvalidate = {{ url = \"{}/validate\", expect = 200 }}\n",
        route("r", "v", &up),
        file.display().to_string(),
        up.url
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let admin = format!("http://{}", sk.admin_addr);
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "one").await, "good_one");

    std::fs::write(&file, "not_accepted\n").unwrap();
    let r = post(&c, &format!("{admin}/tokens/v/refresh")).await;
    let j = r.json();
    assert_eq!(j["result"], "rejected", "{j}");
    assert_eq!(j["generation"], 1);
    assert!(j["last_error"].as_str().unwrap().contains("401"), "{j}");
    assert!(!r.text().contains("not_accepted"));
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "two").await, "good_one");
    let m = get(&c, &format!("{admin}/metrics")).await.text();
    assert!(m.contains(r#"sidekey_token_rotations_total{token="v",result="rejected"} 1"#), "{m}");

    up.allow("Bearer good_two");
    std::fs::write(&file, "good_two\n").unwrap();
    let r = post(&c, &format!("{admin}/tokens/v/refresh")).await;
    assert_eq!(r.json()["result"], "rotated");
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "three").await, "good_two");
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_outputs_plain_json_and_broken() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let code = dir.path().join("code");
    std::fs::write(&out, "exec_token_1\n").unwrap();
    std::fs::write(&code, "0").unwrap();
    let up = Upstream::plain().await;
    // argv, no shell of sidekey's: the test's own script is run through sh explicitly.
    let config = format!(
        "{LISTEN}\n{}\n[tokens.e]\nsource = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo diagnostics >&2; cat \\\"$0\\\"; exit $(cat \\\"$1\\\")\", {:?}, {:?}]\ntimeout = \"5s\"\n",
        route("r", "e", &up),
        out.display().to_string(),
        code.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let admin = format!("http://{}", sk.admin_addr);
    let refresh = || async { post(&client(), &format!("{admin}/tokens/e/refresh")).await.json() };
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "plain").await, "exec_token_1");

    std::fs::write(&out, r#"{"token": "exec_token_2", "expires_in": 3600}"#).unwrap();
    assert_eq!(refresh().await["result"], "rotated");
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "json").await, "exec_token_2");
    let t = &get(&c, &format!("{admin}/tokens")).await.json()[0];
    assert!(t["expires_at"].is_string(), "{t}");

    for (output, exit, expected) in [
        ("exec_token_3", "3", "exited"),
        (r#"{"tok": "x"}"#, "0", "token"),
        ("", "0", "empty"),
        ("{not json", "0", "JSON"),
    ] {
        std::fs::write(&out, output).unwrap();
        std::fs::write(&code, exit).unwrap();
        let j = refresh().await;
        assert_eq!(j["result"], "failed", "{output:?}: {j}");
        assert!(j["last_error"].as_str().unwrap().contains(expected), "{output:?}: {j}");
        assert_eq!(j["generation"], 2);
        assert!(!j.to_string().contains("exec_token_3"));
    }
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "kept").await, "exec_token_2");
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_source_that_hangs_is_cut_off_by_its_timeout() {
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}\n{}\n[tokens.slow]\nsource = \"exec\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"200ms\"\n",
        route("r", "slow", &up)
    );
    let sk = bounded("start with a hanging token command", start_proxy(&config)).await;
    let t = &get(&client(), &format!("http://{}/tokens", sk.admin_addr)).await.json()[0];
    assert!(t["last_error"].as_str().unwrap().contains("did not finish"), "{t}");
    assert_eq!(t["state"], "unavailable");
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_source_follows_new_versions_in_openbao_kv_v2() {
    std::env::set_var("SK_BAO_TOKEN", BAO_ROOT);
    let bao = Bao::start().await;
    bao.put("api", serde_json::json!({ "token": "vault_value_1" })).await;
    let up = Upstream::plain().await;
    let config = format!(
        r#"{LISTEN}
{}
[tokens.vault]
source = "http"
url = "http://{}/v1/secret/data/api"
headers = {{ "X-Vault-Token" = {{ env = "SK_BAO_TOKEN" }} }}
pointer = "/data/data/token"
refresh = "1s"
"#,
        route("r", "vault", &up),
        bao.addr
    );
    let sk = start_proxy(&config).await;
    let c = client();
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "v1").await, "vault_value_1");

    // A new secret version is picked up on the refresh interval.
    bao.put("api", serde_json::json!({ "token": "vault_value_2" })).await;
    wait_generation(&sk, "vault", 2).await;
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "v2").await, "vault_value_2");

    // A version without the token: a clear error, the value kept.
    bao.put("api", serde_json::json!({ "other": "x" })).await;
    let j = post(&c, &format!("http://{}/tokens/vault/refresh", sk.admin_addr)).await.json();
    assert_eq!(j["result"], "failed");
    assert!(j["last_error"].as_str().unwrap().contains("/data/data/token"), "{j}");
    assert_eq!(bearer_seen(&c, &sk, &up, "r", "kept").await, "vault_value_2");
    sk.shutdown().await;
}
