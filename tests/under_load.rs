//! Rotation under load: several keep-alive clients send requests continuously while the token
//! rotates every ~200 ms. Zero failed requests, zero dropped client connections, upstream
//! connections reused. Once against an upstream that accepts only the current and the previous
//! token, once against a real OAuth2 resource server (apache + mod_auth_openidc).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::servers::{Apache, Oidc};
use support::*;

/// The most either test may take to reach its counts.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    unauthorized: AtomicU64,
}

/// One client: one TCP connection, requests one after another until `stop`. A dropped
/// connection ends the client and counts as a failure.
async fn client_loop(proxy: std::net::SocketAddr, path: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(driver);
    while !stop.load(Ordering::Relaxed) {
        let sent = async {
            conn.ready().await?;
            let req = http::Request::get(path.as_str())
                .header("host", "sidekey")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = conn.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        match tokio::time::timeout(WAIT, sent).await {
            Ok(Ok(s)) if s == 200 => tally.ok.fetch_add(1, Ordering::Relaxed),
            Ok(Ok(s)) if s == 401 => tally.unauthorized.fetch_add(1, Ordering::Relaxed),
            Ok(Ok(s)) => panic!("unexpected status {s}"),
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return; // the connection is gone
            }
        };
    }
}

fn run_clients(
    n: usize,
    proxy: std::net::SocketAddr,
    path: &str,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n).map(|_| tokio::spawn(client_loop(proxy, path.to_owned(), stop.clone(), tally.clone()))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_every_200ms_under_keep_alive_load_fails_no_request() {
    const CLIENTS: usize = 4;
    // Runs until both are reached, however long that takes on a loaded machine, up to LIMIT.
    const ROTATIONS: u64 = 40;
    const REQUESTS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let value = |n: u64| format!("load_token_{n:05}");
    std::fs::write(&path, value(0)).unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow(&format!("Bearer {}", value(0)));
    let config = format!(
        "{LISTEN}\n[[routes]]\nname = \"load\"\nprefix = \"/load\"\nupstream = \"{}\"\ntoken = \"t\"\n\n[tokens.t]\nsource = \"file\"\npath = {:?}\n",
        up.url,
        path.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = run_clients(CLIENTS, sk.proxy_addr, "/load/x", &stop, &tally);

    // The rotator: the upstream learns the new value first, then the file changes, then the
    // value before the previous one stops being accepted.
    let started = Instant::now();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.tick().await;
    while n < ROTATIONS || tally.ok.load(Ordering::Relaxed) < REQUESTS {
        let ok = tally.ok.load(Ordering::Relaxed);
        assert!(started.elapsed() < LIMIT, "{n} rotations and {ok} requests in {LIMIT:?}");
        assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "a request failed or a client connection dropped");
        tick.tick().await;
        n += 1;
        up.allow(&format!("Bearer {}", value(n)));
        let tmp = dir.path().join("token.tmp");
        std::fs::write(&tmp, value(n)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        if n >= 2 {
            up.disallow(&format!("Bearer {}", value(n - 2)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        bounded("a client to finish", c).await.unwrap();
    }
    let (ok, failed, unauthorized) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.unauthorized.load(Ordering::Relaxed),
    );
    let generation = sk.tokens().get("t").unwrap().current().unwrap().generation;
    let connections = up.connection_count();
    println!(
        "rotation under load: {ok} requests from {CLIENTS} keep-alive clients over {:.1} s, {n} rotations written, \
         generation {generation}, {unauthorized} answered 401, {failed} failed, {connections} upstream connections",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(failed, 0, "requests failed or client connections dropped");
    assert_eq!(unauthorized, 0, "a request went out with a token older than the previous one");
    assert!(ok >= REQUESTS && n >= ROTATIONS, "{ok} requests, {n} rotations");
    // Every rotation written is picked up (inotify sees each rename; they are 200 ms apart).
    assert!(generation >= n + 1 - 2, "generation {generation} after {n} rotations");
    assert!(connections as u64 * 100 < ok, "{connections} upstream connections for {ok} requests");
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_rotation_against_a_real_resource_server() {
    const CLIENTS: usize = 3;
    // Runs until both are reached, however long that takes on a loaded machine, up to LIMIT.
    const ROTATIONS: u64 = 10;
    const REQUESTS: u64 = 100;
    std::env::set_var("SK_LOAD_OIDC_SECRET", "load-secret");
    std::env::set_var("SK_LOAD_STRANGER_SECRET", "stranger-secret");
    // Tokens live 2 s and are refreshed 1.8 s before expiry: a new one about every 200 ms.
    let oidc = Oidc::start_https(r#"[{"client_id":"svc","client_secret":"load-secret"}]"#, 2);
    // A second provider with its own keys: the resource server must refuse its tokens.
    let stranger = Oidc::start(r#"[{"client_id":"svc","client_secret":"stranger-secret"}]"#, 60, 0);
    let apache = Apache::start(&oidc, "urn:sidekey:test").await;
    let config = format!(
        r#"{LISTEN}
[[routes]]
name = "api"
prefix = "/api"
upstream = "http://{apache}"
token = "t"

[[routes]]
name = "stranger"
prefix = "/stranger"
upstream = "http://{apache}"
token = "s"

[tokens.t]
source = "oauth2"
token_url = "{url}"
client_id = "svc"
client_secret = {{ env = "SK_LOAD_OIDC_SECRET" }}
refresh_before = "1.8s"

[tokens.s]
source = "oauth2"
token_url = "{stranger_url}"
client_id = "svc"
client_secret = {{ env = "SK_LOAD_STRANGER_SECRET" }}
"#,
        apache = apache.addr,
        url = oidc.token_url,
        stranger_url = stranger.token_url
    );
    let sk = start_proxy(&config).await;
    let c = client();

    // The resource server is real: a token it cannot verify gets 401, passed on unchanged and
    // counted per route and token.
    let a = get(&c, &format!("http://{}/stranger/x", sk.proxy_addr)).await;
    assert_eq!(a.status, 401);
    assert!(a.headers.contains_key("www-authenticate"));
    let a = get(&c, &format!("http://{}/api/hello", sk.proxy_addr)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["claims"]["client_id"], "svc");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let token = sk.tokens().get("t").unwrap().clone();
    let first_generation = token.current().unwrap().generation;
    let mut generations = token.subscribe();
    let clients = run_clients(CLIENTS, sk.proxy_addr, "/api/x", &stop, &tally);
    let started = Instant::now();
    loop {
        let rotations = *generations.borrow_and_update() - first_generation;
        let ok = tally.ok.load(Ordering::Relaxed);
        if rotations >= ROTATIONS && ok >= REQUESTS {
            break;
        }
        assert!(started.elapsed() < LIMIT, "{rotations} rotations and {ok} requests in {LIMIT:?}");
        assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "a request failed or a client connection dropped");
        // A new generation, or a look at the requests' count again (they come much faster).
        let _ = tokio::time::timeout(Duration::from_millis(50), generations.changed()).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        bounded("a client to finish", c).await.unwrap();
    }
    let rotations = sk.tokens().get("t").unwrap().current().unwrap().generation - first_generation;
    let (ok, failed, unauthorized) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.unauthorized.load(Ordering::Relaxed),
    );
    println!("against apache + mod_auth_openidc: {ok} requests, {rotations} rotations, {unauthorized} answered 401, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(unauthorized, 0, "the resource server refused a token sidekey sent");
    assert!(rotations >= ROTATIONS && ok >= REQUESTS, "{rotations} rotations, {ok} requests");
    let m = get(&c, &format!("http://{}/metrics", sk.admin_addr)).await.text();
    // The stranger's token was fresh, with no previous one: its 401 forced one refresh and one
    // retry, which the resource server refused too. Both upstream 401s count; the client saw one.
    assert!(m.contains(r#"sidekey_upstream_unauthorized_total{route="stranger",token="s"} 2"#), "{m}");
    assert!(m.contains(
        r#"sidekey_upstream_retries_total{route="stranger",token="s",with="refreshed",outcome="unauthorized"} 1"#
    ));
    assert!(m.contains(r#"sidekey_requests_total{route="stranger",status="401"} 1"#));
    let t = get(&c, &format!("http://{}/tokens", sk.admin_addr)).await.json();
    let s = t.as_array().unwrap().iter().find(|t| t["name"] == "s").unwrap();
    assert_eq!(s["unauthorized"], 2);
    sk.shutdown().await;
}
