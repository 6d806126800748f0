//! gRPC through sidekey, against a real gRPC server and client (grpcio, gRPC's C core): the
//! client speaks HTTP/2 with prior knowledge to the proxy listener, sidekey injects the token
//! and forwards over TLS (HTTP/2 by ALPN) to the server. Unary, failing, server-streaming and
//! bidirectional calls, with their status and trailing metadata carried back in trailers, and
//! UNAUTHENTICATED counted as an upstream 401; and the same from a TLS-only client through the
//! HTTPS interception (`grpc_proxy`).

mod support;

use support::servers::Grpc;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_with_the_token_their_status_and_trailers_and_unauthenticated_counts_as_401() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf_files();
    let server = Grpc::start(&cert, &key);
    let token_file = ca.dir.path().join("token");
    std::fs::write(&token_file, "grpc-tok-1\n").unwrap();
    let config = format!(
        "{LISTEN}[upstream]\nca_file = {ca:?}\n\n\
         [[routes]]\nname = \"echo\"\nprefix = \"/echo.Echo\"\nupstream = \"https://localhost:{port}/echo.Echo\"\ntoken = \"t\"\n\n\
         [tokens.t]\nsource = \"file\"\npath = {token:?}\n",
        ca = ca.ca_file.display().to_string(),
        port = server.port,
        token = token_file.display().to_string(),
    );
    let running = start_proxy(&config).await;

    let got = Grpc::call(&running.proxy_addr.to_string()).await;

    // The server refuses a request without `te: trailers` (the C core: "Missing :te header"),
    // so each call getting through at all says the proxy forwarded it.
    assert_eq!(got["say"]["ok"]["authorization"], "Bearer grpc-tok-1", "{got}");
    assert_eq!(got["say"]["ok"]["body"], "hello", "{got}");
    // A trailers-only answer: the status and its message in the answer's one HEADERS frame.
    assert_eq!(got["fail"], serde_json::json!({"code": "PERMISSION_DENIED", "details": "nope"}), "{got}");
    // The status after the messages, and the trailing metadata, come in trailers.
    assert_eq!(got["stream"]["ok"]["messages"], serde_json::json!(["part0", "part1", "part2"]), "{got}");
    assert_eq!(got["stream"]["ok"]["trailers"]["x-done"], "yes", "{got}");
    assert_eq!(got["chat"]["ok"], serde_json::json!(["ONE", "TWO", "THREE"]), "{got}");

    // UNAUTHENTICATED, gRPC's 401, reaches the client as it came and is counted as a 401 (the
    // PERMISSION_DENIED above is not).
    let unauthenticated = serde_json::json!({"code": "UNAUTHENTICATED", "details": "token rejected"});
    assert_eq!(got["unauth"], unauthenticated, "{got}");
    let admin = format!("http://{}", running.admin_addr);
    let metrics = get(&client(), &format!("{admin}/metrics")).await.text();
    let line = r#"sidekey_upstream_unauthorized_total{route="echo",token="t"} "#;
    let counted = metrics.lines().find_map(|l| l.strip_prefix(line));
    assert_eq!(counted, Some("1"), "{metrics}");
    let tokens = get(&client(), &format!("{admin}/tokens")).await.json();
    assert_eq!(tokens[0]["unauthorized"], 1, "{tokens}");
    assert!(!metrics.contains("grpc-tok-1") && !tokens.to_string().contains("grpc-tok-1"));
    running.shutdown().await;
}

/// A gRPC client that only speaks TLS, pointed at sidekey with `grpc_proxy`: its `CONNECT`
/// tunnel is intercepted (sidekey's CA trusted by the client), and the calls go on as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_through_the_https_interception_gets_the_token_and_trailers() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf_files();
    let server = Grpc::start(&cert, &key);
    let token_file = ca.dir.path().join("token");
    std::fs::write(&token_file, "grpc-tok-2\n").unwrap();
    let sidekey_ca = ca.dir.path().join("sidekey-ca.crt");
    let config = format!(
        "{LISTEN}[intercept]\ngenerate = true\nca_cert_out = {out:?}\n\n\
         [[routes]]\nname = \"intercepted\"\nhost = \"api.test\"\nupstream = \"https://localhost:{port}\"\n\
         ca_file = {ca:?}\ntoken = \"t\"\n\n\
         [tokens.t]\nsource = \"file\"\npath = {token:?}\n",
        out = sidekey_ca.display().to_string(),
        port = server.port,
        ca = ca.ca_file.display().to_string(),
        token = token_file.display().to_string(),
    );
    let running = start_proxy(&config).await;

    let got = Grpc::call_through("api.test:443", &sidekey_ca, running.proxy_addr).await;

    assert_eq!(got["say"]["ok"]["authorization"], "Bearer grpc-tok-2", "{got}");
    assert_eq!(got["fail"], serde_json::json!({"code": "PERMISSION_DENIED", "details": "nope"}), "{got}");
    assert_eq!(got["stream"]["ok"]["messages"], serde_json::json!(["part0", "part1", "part2"]), "{got}");
    assert_eq!(got["stream"]["ok"]["trailers"]["x-done"], "yes", "{got}");
    assert_eq!(got["chat"]["ok"], serde_json::json!(["ONE", "TWO", "THREE"]), "{got}");
    running.shutdown().await;
}
