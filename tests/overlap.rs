//! Overlap and retry: right after a rotation, a 401 to a replayable request is retried once
//! with the previous token (or a freshly forced one when there is none); a request that
//! cannot be replayed never is.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn rotate(dir: &std::path::Path, path: &std::path::Path, value: &str) {
    let tmp = dir.join("next");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Route `r` and token `t`, named `NAME` in metrics (they are process-wide: each test has its own).
fn config(name: &str, up: &Upstream, path: &std::path::Path, extra: &str) -> String {
    format!(
        "{LISTEN}\n[[routes]]\nname = \"{name}\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"t\"\n\n[tokens.t]\nsource = \"file\"\npath = {:?}\n{extra}\n",
        up.url,
        path.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_right_after_a_rotation_is_retried_with_the_previous_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "old_value").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer old_value"); // the new value has not "propagated" to the upstream yet
    let sk = start_proxy(&config("prev", &up, &path, "retry_methods = [\"GET\", \"PUT\"]")).await;
    rotate(dir.path(), &path, "new_value");
    wait_generation(&sk, "t", 2).await;
    let c = client();

    // GET: sent with the new value, 401, retried with the old one.
    let a = get(&c, &format!("http://{}/r/get", sk.proxy_addr)).await;
    assert_eq!(a.status, 200);
    let tries: Vec<String> = up
        .seen()
        .iter()
        .filter(|s| s.path == "/get")
        .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(tries, ["Bearer new_value", "Bearer old_value"]);

    // PUT with a small body: the same, and the body goes out intact both times.
    let body = Bytes::from(pattern(3000));
    let req = Request::put(format!("http://{}/r/put", sk.proxy_addr)).body(Full::new(body.clone())).unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, 200);
    let puts: Vec<_> = up.seen().into_iter().filter(|s| s.path == "/put").collect();
    assert_eq!(puts.len(), 2);
    assert!(puts.iter().all(|s| s.body_sha256 == sha256(&body) && s.body_len == body.len()));

    // POST is not in retry_methods: never sent twice, the client gets the 401.
    let req = Request::post(format!("http://{}/r/post", sk.proxy_addr)).body(Full::new(Bytes::from("x"))).unwrap();
    assert_eq!(send(&c, req).await.status, 401);
    assert_eq!(up.seen().iter().filter(|s| s.path == "/post").count(), 1);

    // A body over the limit is not buffered, so not retried either.
    let big = Bytes::from(pattern(100 * 1024));
    let req = Request::put(format!("http://{}/r/big", sk.proxy_addr)).body(Full::new(big)).unwrap();
    assert_eq!(send(&c, req).await.status, 401);
    assert_eq!(up.seen().iter().filter(|s| s.path == "/big").count(), 1);

    let m = get(&c, &format!("http://{}/metrics", sk.admin_addr)).await.text();
    assert!(
        m.contains(r#"sidekey_upstream_retries_total{route="prev",token="t",with="previous",outcome="success"} 2"#),
        "{m}"
    );
    // The upstream 401s are all counted: two retried, two passed on.
    assert!(m.contains(r#"sidekey_upstream_unauthorized_total{route="prev",token="t"} 4"#), "{m}");

    // Once the new value has propagated, no retry is needed.
    up.allow("Bearer new_value");
    let n = up.seen().len();
    assert_eq!(get(&c, &format!("http://{}/r/later", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.seen().len(), n + 1);
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_previous_token_a_401_forces_one_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    std::fs::write(&file, "revoked_value").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer reissued_value");
    // exec is not watched: only a refresh reads the file again.
    let config = format!(
        "{LISTEN}\n[[routes]]\nname = \"refreshed\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"t\"\n\n[tokens.t]\nsource = \"exec\"\ncommand = [\"cat\", {:?}]\nrefresh = \"1h\"\n",
        up.url,
        file.display().to_string()
    );
    let sk = start_proxy(&config).await;
    std::fs::write(&file, "reissued_value").unwrap();
    let c = client();
    let a = get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let tries: Vec<String> =
        up.seen().iter().map(|s| s.headers["authorization"].to_str().unwrap().to_owned()).collect();
    assert_eq!(tries, ["Bearer revoked_value", "Bearer reissued_value"]);
    assert_eq!(sk.tokens().get("t").unwrap().current().unwrap().generation, 2);
    let m = get(&c, &format!("http://{}/metrics", sk.admin_addr)).await.text();
    assert!(
        m.contains(
            r#"sidekey_upstream_retries_total{route="refreshed",token="t",with="refreshed",outcome="success"} 1"#
        ),
        "{m}"
    );
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_overlap_a_401_is_passed_on_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "old_value").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer old_value");
    let sk = start_proxy(&config("nooverlap", &up, &path, "overlap = \"0s\"")).await;
    rotate(dir.path(), &path, "new_value");
    wait_generation(&sk, "t", 2).await;
    let a = get(&client(), &format!("http://{}/r/x", sk.proxy_addr)).await;
    assert_eq!(a.status, 401);
    assert_eq!(up.seen().len(), 1);
    sk.shutdown().await;
}
