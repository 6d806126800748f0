//! The real `sidekey` binary: `check`, exit codes, logs without secrets, graceful SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("sidekey.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        r#"
[[routes]]
name = "gh"
prefix = "/github"
upstream = "https://api.github.com"
token = "gh"

[tokens.gh]
source = "file"
path = "/var/run/secrets/github/token"
"#,
    );
    let out = Command::new(BIN).args(["check", "-c"]).arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    // The config may also come from SIDEKEY_CONFIG.
    let out = Command::new(BIN).arg("check").env("SIDEKEY_CONFIG", &p).output().unwrap();
    assert!(out.status.success());
}

#[test]
fn check_reports_every_error_with_key_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        r#"[listen]
proxy = "127.0.0.1:8080"
admin = "not an address"

[[routes]]
name = "a"
prefix = "/a"
upstream = "https://a.example"
token = "nope"

[[routes]]
name = "a"
prefix = "/a"
upstream = "ftp://b.example"
token = "t"
header = "Bad Header"
timeout = "5 parsecs"

[tokens.t]
source = "env"
var = "X"
value = "ghp_pasted_by_mistake"
"#,
    );
    let out = Command::new(BIN).args(["check", "-c"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "sidekey.toml:3: listen.admin",
        "sidekey.toml:9: routes[0].token",
        "sidekey.toml:12: routes[1].name",
        "sidekey.toml:13: routes[1].prefix",
        "sidekey.toml:14: routes[1].upstream",
        "sidekey.toml:16: routes[1].header",
        "sidekey.toml:17: routes[1].timeout",
        "sidekey.toml:22: tokens.t.value",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("ghp_pasted_by_mistake"), "an error echoed a secret:\n{err}");
}

#[test]
fn bad_invocations_exit_2() {
    let out = Command::new(BIN).args(["run", "-c", "/nonexistent/sidekey.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
    let out = Command::new(BIN).arg("run").env_remove("SIDEKEY_CONFIG").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), "this is [not toml\n");
    let out = Command::new(BIN).args(["run", "-c"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sidekey.toml:1: invalid TOML"));
}

/// One output stream of a child, collected line by line on a thread.
struct Lines {
    all: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
        let all = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let a = all.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                a.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Lines { all, rx }
    }

    /// Waits (bounded) for a line containing `needle`.
    fn wait(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {WAIT:?}; got:\n{}", self.text()),
            }
        }
    }

    fn text(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }
}

/// A running `sidekey` process, its output collected; killed on drop.
struct Proc {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Proc {
    fn spawn(args: &[&str], rust_log: &str) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        let unset = "0.0.0.0:0".parse().unwrap();
        Proc { child, stdout, stderr, proxy: unset, admin: unset }
    }

    /// `sidekey run` with JSON logs; returns once it listens.
    fn start(config: &std::path::Path, rust_log: &str) -> Proc {
        let mut p = Proc::spawn(&["run", "--log-format", "json", "-c", config.to_str().unwrap()], rust_log);
        let line = p.wait_line("sidekey listening");
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        p.proxy = j["proxy"].as_str().unwrap().parse().unwrap();
        p.admin = j["admin"].as_str().unwrap().parse().unwrap();
        p
    }

    /// Waits (bounded) for a log line containing `needle`.
    fn wait_line(&mut self, needle: &str) -> String {
        self.stderr.wait(needle)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sidekey did not exit within {WAIT:?}");
            }
            // The exit of a child has no awaitable signal in std; this polls a finished flag.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        self.stderr.text()
    }
}

/// The JSON log lines of `log` (`--log-format json`), each parsed.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn file_config(dir: &std::path::Path, upstream: &str, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"{LISTEN}
[shutdown]
grace = "10s"

[[routes]]
name = "r"
prefix = "/r"
upstream = "{upstream}"
token = "t"
{extra}

[tokens.t]
source = "file"
path = {path:?}
"#,
            path = dir.join("token").display().to_string()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_values_never_reach_the_logs_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let first = "ghp_FirstSecretValue0123456789";
    let second = "ghp_SecondSecretValue987654321";
    std::fs::write(dir.path().join("token"), format!("{first}\n")).unwrap();
    let ca = TestCa::new();
    let up = Upstream::tls(&ca).await;
    let config = file_config(dir.path(), &up.url, &format!("ca_file = {:?}", ca.ca_file.display().to_string()));
    let mut p = Proc::start(&config, "debug");
    let c = client();
    let h2 = h2c_client();
    for path in ["/r/a", "/r/status/401", "/r/status/500", "/nowhere"] {
        get(&c, &format!("http://{}{path}", p.proxy)).await;
        get(&h2, &format!("http://{}{path}", p.proxy)).await;
    }
    std::fs::write(dir.path().join("token.new"), format!("{second}\n")).unwrap();
    std::fs::rename(dir.path().join("token.new"), dir.path().join("token")).unwrap();
    p.wait_line("token rotated");
    let a = get(&c, &format!("http://{}/r/b", p.proxy)).await;
    assert_eq!(a.status, 200);
    assert_eq!(up.last().headers["authorization"], format!("Bearer {second}").as_str());
    post(&c, &format!("http://{}/tokens/t/refresh", p.admin)).await;
    std::fs::write(dir.path().join("token"), "").unwrap();
    post(&c, &format!("http://{}/tokens/t/refresh", p.admin)).await;
    p.signal("-TERM");
    assert_eq!(p.wait_exit(), Some(0));
    let log = p.log();
    // The log is at debug level and the test reads real output: the debug line of each request
    // is there, this one's with the upstream's 401.
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" && l["message"] == "request" && l["route"] == "r" && l["status"] == 401),
        "no debug line for the request answered 401: {log}"
    );
    assert!(log.contains("refresh failed"), "{log}");
    for secret in [first, second] {
        assert!(!log.contains(secret), "a token value reached the log");
        assert!(!log.contains(&secret[4..20]), "part of a token value reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "drain_token\n").unwrap();
    let up = Upstream::plain().await;
    let config = file_config(dir.path(), &up.url, "");
    let mut p = Proc::start(&config, "info");
    let url = format!("http://{}/r/hold", p.proxy);
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    up.wait_held().await;

    p.signal("-TERM");
    p.wait_line("shutdown signal received");
    // Draining: not ready, and no new connections accepted.
    let r = get(&client(), &format!("http://{}/readyz", p.admin)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["draining"], true);

    up.release();
    let a = bounded("the in-flight request", in_flight).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(p.wait_exit(), Some(0));
    assert!(tokio::net::TcpStream::connect(p.proxy).await.is_err(), "the proxy still accepts after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_rotates_and_stops_cleanly() {
    let mut p = Proc::spawn(
        &["demo", "--port", "0", "--admin-port", "0", "--rotate-every", "1s", "--log-format", "json"],
        "info",
    );
    // stdout: the banner with the curl lines.
    let curl = p.stdout.wait("/echo/hello");
    let url = curl.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    let dashboard = p.stdout.wait("Dashboard:");
    let admin = dashboard.split_whitespace().last().unwrap().trim_end_matches('/').to_owned();

    let c = client();
    let first = get(&c, &url).await;
    assert_eq!(first.status, 200);
    let auth1 = first.json()["headers"]["authorization"].as_str().unwrap().to_owned();
    assert!(auth1.starts_with("Bearer demo_"), "{auth1}");

    let rotated = p.wait_line("token rotated");
    assert!(rotated.contains("sha256:"), "rotations are logged with fingerprints: {rotated}");
    assert!(!rotated.contains(auth1.trim_start_matches("Bearer ")), "the rotation log shows a value");
    let second = get(&c, &url).await;
    let auth2 = second.json()["headers"]["authorization"].as_str().unwrap().to_owned();
    assert_ne!(auth1, auth2, "the demo token rotated");
    let tokens = get(&c, &format!("{admin}/tokens")).await.json();
    assert!(tokens[0]["generation"].as_u64().unwrap() >= 2);

    p.signal("-INT");
    assert_eq!(p.wait_exit(), Some(0));
}

/// Peak resident memory of a process, from /proc (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_without_growing_memory() {
    use futures_util::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "stream_token\n").unwrap();
    let up = Upstream::plain().await;
    let config = file_config(dir.path(), &up.url, "timeout = \"120s\"");
    let p = Proc::start(&config, "info");
    let baseline = peak_rss_kib(p.child.id());

    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 512; // 128 MiB
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let body = StreamBody::new(stream::iter(
        (0..CHUNKS).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    ));
    let client: hyper_util::client::legacy::Client<_, StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/r/upload", p.proxy)).body(body).unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(120), client.request(req))
        .await
        .expect("the upload finishes")
        .unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let j: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(j["body_len"], CHUNK * CHUNKS);
    let peak = peak_rss_kib(p.child.id());
    // 128 MiB went through; the proxy's peak memory grew by a few buffers at most.
    assert!(peak < baseline + 32 * 1024, "peak RSS {peak} KiB vs {baseline} KiB at start: the body was buffered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_config_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "hup_token\n").unwrap();
    let up = Upstream::plain().await;
    let config = file_config(dir.path(), &up.url, "");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut p = Proc::start(&config, "info");
    let c = client();
    assert_eq!(get(&c, &format!("http://{}/r2/x", p.proxy)).await.status, 404);

    let second_route =
        format!("\n[[routes]]\nname = \"r2\"\nprefix = \"/r2\"\nupstream = \"{}\"\ntoken = \"t\"\n", up.url);
    std::fs::write(&config, format!("{original}{second_route}")).unwrap();
    p.signal("-HUP");
    p.wait_line("config reloaded");
    assert_eq!(get(&c, &format!("http://{}/r2/x", p.proxy)).await.status, 200);

    std::fs::write(&config, format!("{original}{second_route}\n[[routes]]\nname = \"bad\"\nprefix = \"nope\"\nupstream = \"{}\"\ntoken = \"t\"\n", up.url)).unwrap();
    p.signal("-HUP");
    let line = p.wait_line("invalid config");
    assert!(line.contains("routes[2].prefix"), "{line}");
    p.wait_line("config reload refused");
    assert_eq!(get(&c, &format!("http://{}/r2/y", p.proxy)).await.status, 200, "the running config stays");
    p.signal("-TERM");
    assert_eq!(p.wait_exit(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "watch_token\n").unwrap();
    let up = Upstream::plain().await;
    let config = file_config(dir.path(), &up.url, "");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut p = Proc::spawn(&["run", "--watch-config", "--log-format", "json", "-c", config.to_str().unwrap()], "info");
    let line = p.wait_line("sidekey listening");
    let proxy: std::net::SocketAddr =
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["proxy"].as_str().unwrap().parse().unwrap();
    let tmp = dir.path().join("new.toml");
    std::fs::write(
        &tmp,
        format!("{original}\n[[routes]]\nname = \"w\"\nprefix = \"/w\"\nupstream = \"{}\"\ntoken = \"t\"\n", up.url),
    )
    .unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    p.wait_line("config reloaded");
    assert_eq!(get(&client(), &format!("http://{proxy}/w/x")).await.status, 200);
}

/// The base64 lines of a PEM private key, for searching output for any part of it.
fn key_fragments(pem: &str) -> Vec<String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    // Every 16-character window that starts on a 4-character boundary.
    (0..body.len().saturating_sub(16)).step_by(4).map(|i| body[i..i + 16].to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interception_ca_key_never_reaches_the_logs_errors_or_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let init = Command::new(BIN).args(["ca", "init", "--out"]).arg(dir.path().join("ca")).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let init_out = String::from_utf8_lossy(&init.stdout).into_owned();
    let key_path = dir.path().join("ca/ca.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap();
    // A second init into the same directory refuses and keeps the pair.
    let again = Command::new(BIN).args(["ca", "init", "--out"]).arg(dir.path().join("ca")).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);

    std::fs::write(dir.path().join("token"), "intercept_token_value\n").unwrap();
    let ca = TestCa::new();
    let up = Upstream::tls(&ca).await;
    let config = file_config(
        dir.path(),
        &up.url,
        &format!(
            "host = \"api.test\"\nca_file = {:?}\n\n[intercept]\nca_cert = {{ file = {:?} }}\nca_key = {{ file = {:?} }}\n\
             ca_cert_out = {:?}\n",
            ca.ca_file.display().to_string(),
            dir.path().join("ca/ca.crt").display().to_string(),
            key_path.display().to_string(),
            dir.path().join("trust.crt").display().to_string(),
        ),
    );
    let check = Command::new(BIN).args(["check", "-c"]).arg(&config).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let mut p = Proc::start(&config, "debug");
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null", "--cacert"])
        .arg(dir.path().join("trust.crt"))
        .arg("https://api.test/r/x")
        .env("HTTPS_PROXY", format!("http://{}", p.proxy))
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): install it (tests/servers/install.sh does)"));
    assert!(curl.status.success(), "{}", String::from_utf8_lossy(&curl.stderr));
    // A client that does not trust the CA: the failed handshake is logged.
    let untrusting = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca.ca_file)
        .arg("https://api.test/r/y")
        .env("HTTPS_PROXY", format!("http://{}", p.proxy))
        .output()
        .await
        .unwrap();
    assert!(!untrusting.status.success());
    p.wait_line("client TLS handshake failed");
    // A key that does not match the certificate: refused on reload, the CA in force kept.
    let other = tempfile::tempdir().unwrap();
    Command::new(BIN).args(["ca", "init", "--out"]).arg(other.path()).output().unwrap();
    let other_key = std::fs::read_to_string(other.path().join("ca.key")).unwrap();
    std::fs::write(dir.path().join("ca/ca.key.new"), &other_key).unwrap();
    std::fs::rename(dir.path().join("ca/ca.key.new"), &key_path).unwrap();
    let refused = p.wait_line("cannot reload the interception CA");
    assert!(refused.contains("does not belong"), "{refused}");
    let c = client();
    let mut admin_text = String::new();
    for path in ["/tokens", "/routes", "/metrics", "/", "/intercept", "/intercept/ca.crt"] {
        admin_text.push_str(&get(&c, &format!("http://{}{path}", p.admin)).await.text());
    }
    p.signal("-TERM");
    assert_eq!(p.wait_exit(), Some(0));
    let log = p.log();
    assert!(log.contains("HTTPS interception on"), "{log}");
    // A check of the mismatched pair says so without quoting either key.
    let check = Command::new(BIN).args(["check", "-c"]).arg(&config).output().unwrap();
    assert_eq!(check.status.code(), Some(2));
    let check_err = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(check_err.contains("intercept.ca_key"), "{check_err}");
    // A PEM EC key also holds the public key, which the (public) certificates show: search for
    // the fragments that are not in a certificate.
    let certs = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("ca/ca.crt")).unwrap(),
        std::fs::read_to_string(other.path().join("ca.crt")).unwrap()
    );
    let secret_fragments: Vec<Vec<String>> = [&key, &other_key]
        .iter()
        .map(|k| key_fragments(k).into_iter().filter(|f| !certs.contains(f.as_str())).collect())
        .collect();
    assert!(secret_fragments.iter().all(|f| f.len() >= 3), "the keys' private parts are searched for");
    for (what, text) in
        [("log", &log), ("admin API", &admin_text), ("ca init output", &init_out), ("check", &check_err)]
    {
        for fragment in secret_fragments.iter().flatten() {
            assert!(!text.contains(fragment.as_str()), "part of a CA key reached the {what}");
        }
        assert!(!text.contains("intercept_token_value"), "the token reached the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_basic_values_never_reach_the_logs_or_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let (query_value, password) = ("qv_QuerySecretValue4242", "pw_BasicSecretValue7777");
    std::fs::write(dir.path().join("q"), format!("{query_value}\n")).unwrap();
    std::fs::write(dir.path().join("p"), format!("{password}\n")).unwrap();
    let up = Upstream::plain().await;
    let audit = dir.path().join("audit.log");
    let config = write_config(
        dir.path(),
        &format!(
            "{LISTEN}[audit]\npath = {audit:?}\nsummary_interval = \"1s\"\n\
             [[routes]]\nname = \"q\"\nprefix = \"/q\"\nupstream = {url:?}\ntoken = \"q\"\nquery = \"key\"\n\
             [[routes]]\nname = \"b\"\nprefix = \"/b\"\nupstream = {url:?}\n\
             basic = {{ username = \"svc\", password = \"{{token:p}}\" }}\n\
             [tokens.q]\nsource = \"file\"\npath = {q:?}\n[tokens.p]\nsource = \"file\"\npath = {p:?}\n",
            audit = audit.display().to_string(),
            url = up.url,
            q = dir.path().join("q").display().to_string(),
            p = dir.path().join("p").display().to_string(),
        ),
    );
    let mut p = Proc::start(&config, "debug");
    let c = client();
    for path in ["/q/a?x=1", "/q/b", "/b/a", "/b/status/401", "/b/status/500", "/nowhere?key=k"] {
        get(&c, &format!("http://{}{path}", p.proxy)).await;
    }
    let with_key = format!("/a?x=1&key={query_value}");
    assert!(up.seen().iter().any(|s| s.path == with_key), "the upstream got the query value");
    let basic = format!("svc:{password}");
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, basic.as_bytes());
    assert_eq!(up.last().headers["authorization"], format!("Basic {encoded}").as_str());
    std::fs::write(dir.path().join("q.new"), "qv_second_value_5151\n").unwrap();
    std::fs::rename(dir.path().join("q.new"), dir.path().join("q")).unwrap();
    p.wait_line("token rotated");
    get(&c, &format!("http://{}/q/after", p.proxy)).await;
    p.wait_line("\"request\"");
    p.signal("-TERM");
    assert_eq!(p.wait_exit(), Some(0));
    let log = p.log();
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(audit_text.contains("\"usage\""), "the audit log has the usage summary: {audit_text}");
    for (what, text) in [("log", &log), ("audit log", &audit_text)] {
        for secret in [query_value, "qv_second_value_5151", password, encoded.as_str()] {
            assert!(!text.contains(secret), "a credential reached the {what}");
            assert!(!text.contains(&secret[3..15]), "part of a credential reached the {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_credentials_and_signatures_never_reach_the_logs_even_at_trace_level() {
    let moto = support::servers::Moto::start(3);
    let creds = moto.admin("setup", &[], None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws.json"), creds.to_string()).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {url:?}\ntoken = \"aws\"\n\
             sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\" }} }}\n\
             [tokens.aws]\nsource = \"file\"\npath = {file:?}\n",
            url = moto.url,
            file = dir.path().join("aws.json").display().to_string()
        ),
    );
    let mut p = Proc::start(&config, "trace");
    let c = client();
    let put = http::Request::put(format!("http://{}/s3/leak-check", p.proxy)).body(Default::default()).unwrap();
    assert_eq!(send(&c, put).await.status, 200);
    let a = get(&c, &format!("http://{}/s3/leak-check", p.proxy)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    p.signal("-TERM");
    assert_eq!(p.wait_exit(), Some(0));
    let log = p.log();
    assert!(json_lines(&log).iter().any(|l| l["level"] == "TRACE"), "no trace-level line in the log: {log}");
    for secret in [creds["AccessKeyId"].as_str().unwrap(), creds["SecretAccessKey"].as_str().unwrap()] {
        assert!(!log.contains(secret), "a credential reached the log");
        assert!(!log.contains(&secret[4..16]), "part of a credential reached the log");
    }
    assert!(!log.contains("Signature="), "a signature reached the log");
}
