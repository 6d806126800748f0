//! gRPC through sidekey, against a real gRPC server and client (grpcio, gRPC's C core): the
//! client speaks HTTP/2 with prior knowledge to the proxy listener, sidekey injects the token
//! and forwards over TLS (HTTP/2 by ALPN) to the server. Unary, failing, server-streaming and
//! bidirectional calls, with their status and trailing metadata carried back in trailers, and
//! UNAUTHENTICATED counted as an upstream 401; and the same from a TLS-only client through the
//! HTTPS interception (`grpc_proxy`).

mod support;

use support::servers::Grpc;
use support::*;

/// The gRPC server over TLS (a leaf of a test CA), and a token file for sidekey's token `t`.
struct Echo {
    ca: TestCa,
    server: Grpc,
    token_file: std::path::PathBuf,
}

impl Echo {
    fn start(token: &str) -> Echo {
        let ca = TestCa::new();
        let (cert, key) = ca.leaf_files();
        let server = Grpc::start(&cert, &key);
        let token_file = ca.dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        Echo { ca, server, token_file }
    }

    /// A route to the server (`rest`: its matching keys and upstream path) with token `t`.
    fn route(&self, name: &str, rest: &str) -> String {
        format!(
            "[[routes]]\nname = {name:?}\n{rest}\nca_file = {ca:?}\ntoken = \"t\"\n\n\
             [tokens.t]\nsource = \"file\"\npath = {token:?}\n",
            ca = self.ca.ca_file.display().to_string(),
            token = self.token_file.display().to_string(),
        )
    }
}

/// What `echo.py call` got back when every call went through with `token`.
fn assert_went_through(got: &serde_json::Value, token: &str) {
    // The server refuses a request without `te: trailers` (the C core: "Missing :te header"),
    // so each call getting through at all says the proxy forwarded it.
    assert_eq!(got["say"]["ok"]["authorization"], format!("Bearer {token}"), "{got}");
    assert_eq!(got["say"]["ok"]["body"], "hello", "{got}");
    // A trailers-only answer: the status and its message in the answer's one HEADERS frame.
    assert_eq!(got["fail"], serde_json::json!({"code": "PERMISSION_DENIED", "details": "nope"}), "{got}");
    // The status after the messages, and the trailing metadata, come in trailers.
    assert_eq!(got["stream"]["ok"]["messages"], serde_json::json!(["part0", "part1", "part2"]), "{got}");
    assert_eq!(got["stream"]["ok"]["trailers"]["x-done"], "yes", "{got}");
    assert_eq!(got["chat"]["ok"], serde_json::json!(["ONE", "TWO", "THREE"]), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_with_the_token_their_status_and_trailers_and_unauthenticated_counts_as_401() {
    let echo = Echo::start("grpc-tok-1");
    let rest = format!("prefix = \"/echo.Echo\"\nupstream = \"https://localhost:{}/echo.Echo\"", echo.server.port);
    let running = start_proxy(&format!("{LISTEN}{}", echo.route("echo", &rest))).await;

    let got = Grpc::call(&running.proxy_addr.to_string()).await;

    assert_went_through(&got, "grpc-tok-1");
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
    let echo = Echo::start("grpc-tok-2");
    let sidekey_ca = echo.ca.dir.path().join("sidekey-ca.crt");
    let rest = format!("host = \"api.test\"\nupstream = \"https://localhost:{}\"", echo.server.port);
    let intercept = format!("[intercept]\ngenerate = true\nca_cert_out = {:?}\n\n", sidekey_ca.display().to_string());
    let running = start_proxy(&format!("{LISTEN}{intercept}{}", echo.route("intercepted", &rest))).await;

    let got = Grpc::call_through("api.test:443", &sidekey_ca, running.proxy_addr).await;

    assert_went_through(&got, "grpc-tok-2");
    running.shutdown().await;
}
