//! Retired tokens leave no copies in sidekey's memory. The real binary runs with a token that is
//! rotated many times while keep-alive clients send requests through it (a file token; an
//! OAuth2 token from a real provider, whose responses pass through hyper and serde_json); once
//! the requests are done, every readable mapping of the process (`/proc/PID/maps` and
//! `/proc/PID/mem`) is searched for every value it ever held. The current value must be found
//! and so must a request head still being sent, held in a connection's buffer on the heap (the
//! scan sees the heap and the token store); the retired ones must not. A writable mapping the
//! scan cannot read fails it. A control runs the same server without the zeroing allocator
//! (this test binary, run again as the server: the allocator is the `sidekey` binary's
//! `#[global_allocator]`, not the library's) and must find retired copies.
//! A Vault JWT login is scanned the same way for its retired client tokens and for every
//! identity JWT it read (none is kept past its login).

mod support;

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use support::servers::Oidc;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");
const ROTATIONS: usize = 30;
const CLIENTS: usize = 4;

/// A value no other process or byte pattern would hold by chance.
fn value(n: usize, salt: u64) -> String {
    format!("scanme{n:03}x{salt:016x}{:016x}", salt.rotate_left(17) ^ n as u64)
}

struct Scan {
    regions: usize,
    bytes: usize,
    /// Writable mappings that could not be read: heap or buffers the scan did not see.
    unreadable: Vec<String>,
    /// Per value searched: where each copy was found (the mapping's path or kind).
    found: Vec<Vec<String>>,
}

/// Reads every readable mapping of `pid` and finds each of `needles` in it.
fn scan(pid: u32, needles: &[String]) -> Scan {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem =
        std::fs::File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| panic!("cannot open /proc/{pid}/mem: {e}"));
    let mut scan = Scan { regions: 0, bytes: 0, unreadable: Vec::new(), found: vec![Vec::new(); needles.len()] };
    let finders: Vec<memchr::memmem::Finder> =
        needles.iter().map(|n| memchr::memmem::Finder::new(n.as_bytes())).collect();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        let name = parts.nth(3).unwrap_or("[anonymous]").to_owned();
        let writable = perms.as_bytes().get(1) == Some(&b'w');
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" || name == "[vvar_vclock]" {
            if writable {
                scan.unreadable.push(format!("{line} (not readable)"));
            }
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut buf = vec![0u8; (end - start) as usize];
        if let Err(e) = mem.seek(SeekFrom::Start(start)).and_then(|_| mem.read_exact(&mut buf)) {
            if writable {
                scan.unreadable.push(format!("{line} ({e})"));
            }
            continue;
        }
        scan.regions += 1;
        scan.bytes += buf.len();
        for (i, f) in finders.iter().enumerate() {
            for _ in f.find_iter(&buf) {
                scan.found[i].push(name.clone());
            }
        }
    }
    scan
}

/// The real binary, started with `sidekey run --log-format json`, its log read line by line.
struct Sidekey {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Sidekey {
    fn spawn(config: &std::path::Path, env: &[(&str, &str)]) -> Sidekey {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--log-format", "json", "-c"]).arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Sidekey::start(cmd)
    }

    /// The control: this test binary running [`CONTROL`] as the server, with the system
    /// allocator.
    fn spawn_control(config: &std::path::Path) -> Sidekey {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([CONTROL, "--exact", "--nocapture", "--test-threads", "1"]).env(CONTROL_CONFIG, config);
        Sidekey::start(cmd)
    }

    fn start(mut cmd: Command) -> Sidekey {
        cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let unset = "0.0.0.0:0".parse().unwrap();
        let mut sk = Sidekey { child, lines, proxy: unset, admin: unset };
        let listening: serde_json::Value = serde_json::from_str(&sk.wait_line("sidekey listening")).unwrap();
        sk.proxy = listening["proxy"].as_str().unwrap().parse().unwrap();
        sk.admin = listening["admin"].as_str().unwrap().parse().unwrap();
        sk
    }

    /// Waits (bounded) for a log line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }
}

impl Drop for Sidekey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_token_values_leave_no_copy_in_memory() {
    let (s, requests) = file_token_scan(|config| Sidekey::spawn(config, &[])).await;
    report_and_check_with("file token", &s, requests, true);
}

/// The test's name, run again as the control's server (see [`control_server`]).
const CONTROL: &str = "retired_copies_remain_without_the_zeroing_allocator";
/// Set for the control's server: its config file.
const CONTROL_CONFIG: &str = "SIDEKEY_SCAN_CONTROL_CONFIG";

/// The control: the same server and load as `retired_token_values_leave_no_copy_in_memory`,
/// without the zeroing allocator, leaves retired values in freed heap memory; the scan must
/// find them, or it could not show their absence either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_copies_remain_without_the_zeroing_allocator() {
    if let Some(config) = std::env::var_os(CONTROL_CONFIG) {
        return control_server(config.into()).await;
    }
    // Whether a freed block with a retired value has been handed out and written over by the
    // time of the scan varies from run to run (0 in about one run of six here): a run of the
    // scenario that leaves none is repeated, up to ATTEMPTS runs in all.
    const ATTEMPTS: usize = 3;
    let mut figures = Vec::new();
    for _ in 0..ATTEMPTS {
        let (s, requests) = file_token_scan(Sidekey::spawn_control).await;
        let rotations = s.found.len() - 2;
        let retired: usize = s.found[..rotations].iter().map(Vec::len).sum();
        eprintln!(
            "memory scan (control, system allocator): {} regions; {rotations} rotations with {requests} requests; \
             current value found {} times; retired values found {retired} times",
            s.regions,
            s.found[rotations].len()
        );
        assert!(s.unreadable.is_empty(), "writable mappings the scan could not read: {:?}", s.unreadable);
        assert!(!s.found[rotations].is_empty(), "the scan did not find the current value");
        assert!(!s.found[rotations + 1].is_empty(), "the scan did not find the request head held on the heap");
        figures.push(retired);
        if retired > 0 {
            return;
        }
    }
    panic!("no retired copy without the zeroing allocator in {ATTEMPTS} runs ({figures:?}): the scan cannot see them");
}

/// The control's server, in this test binary's process (no `#[global_allocator]`: the system
/// allocator), as `sidekey run` serves: logs as JSON lines, the config loaded, sidekey started;
/// it runs until the test kills it.
async fn control_server(config: std::path::PathBuf) {
    sidekey::telemetry::init(sidekey::telemetry::LogFormat::Json);
    let config = sidekey::Config::load(&config).unwrap_or_else(|e| panic!("the control's config: {e}"));
    let _running = sidekey::start(config).await.unwrap_or_else(|e| panic!("the control's server: {e}"));
    std::future::pending::<()>().await;
}

/// Runs the file token scenario against the server `spawn` starts and scans its memory. The
/// values searched: every token value (the current one last but one), then a request head still
/// being sent, held in a connection's read buffer.
async fn file_token_scan(spawn: fn(&std::path::Path) -> Sidekey) -> (Scan, u64) {
    let salt = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let values: Vec<String> = (0..=ROTATIONS).map(|n| value(n, salt)).collect();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &values[0]).unwrap();
    let up = Upstream::plain().await;
    // No overlap: a replaced value is retired at once (with the default, the previous value is
    // kept on purpose for 30 s to retry 401s). no_dump is off so a non-root test may read the
    // process's memory; as root it could anyway.
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "{LISTEN}\n[hardening]\nno_dump = false\n\n[[routes]]\nname = \"scan\"\nprefix = \"/scan\"\nupstream = \"{}\"\n\
             token = \"scan\"\n\n[tokens.scan]\nsource = \"file\"\npath = {:?}\noverlap = \"0s\"\n\n\
             [limits]\nheader_read_timeout = \"10m\"\n",
            up.url,
            token.display().to_string()
        ),
    )
    .unwrap();
    let sk = spawn(&config);
    let (pid, proxy) = (sk.child.id(), sk.proxy);

    // Keep-alive clients send requests the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, answered) = (stop.clone(), answered.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let a = get(&c, &format!("http://{proxy}/scan/c{i}")).await;
                    assert_eq!(a.status, 200);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let until_answered = |more: u64| {
        let target = answered.load(Ordering::Relaxed) + more;
        let answered = answered.clone();
        async move {
            bounded("requests through the proxy", async {
                while answered.load(Ordering::Relaxed) < target {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
        }
    };
    for (n, v) in values.iter().enumerate().skip(1) {
        until_answered(20).await;
        let tmp = dir.path().join("token.tmp");
        std::fs::write(&tmp, v).unwrap();
        std::fs::rename(&tmp, &token).unwrap();
        sk.wait_line(&format!("\"generation\":{}", n + 1));
    }
    // Traffic with the last value on every connection, then quiet.
    until_answered(200).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        bounded("a client to finish", c).await.unwrap();
    }
    // A pooled upstream connection keeps the head of the last request it sent in its write
    // buffer until its next one (docs/security.md, "What it does not protect against"); under load the
    // pool can hold a connection the last phase did not use. As many requests at once as the
    // upstream ever had connections, held there until all have arrived, use every pooled
    // connection with the current value.
    let pooled = up.connection_count();
    eprintln!("memory scan (file token): {pooled} upstream connections to refresh before the scan");
    let held: Vec<_> = (0..pooled)
        .map(|i| {
            let url = format!("http://{proxy}/scan/hold/{i}");
            tokio::spawn(async move { get(&client(), &url).await.status })
        })
        .collect();
    for _ in 0..pooled {
        up.wait_held().await;
    }
    up.release();
    for h in held {
        assert_eq!(bounded("a held request", h).await.unwrap(), 200);
    }
    let current = values.last().unwrap();
    assert_eq!(up.last().headers["authorization"], format!("Bearer {current}").as_str());

    // A request head still being sent: read into its connection's buffer, on the heap, and
    // kept there until the rest comes. The scan must find it.
    let marker = format!("heapmarker{salt:016x}");
    let mut partial = std::net::TcpStream::connect(proxy).unwrap();
    partial.write_all(format!("GET /scan/partial HTTP/1.1\r\nHost: a\r\nX-Marker: {marker}\r\n").as_bytes()).unwrap();
    wait_read_by_peer(pid, &partial).await;
    let mut needles = values;
    needles.push(marker);
    let s = scan(pid, &needles);
    // [hardening] mlock is on by default: the token's pages are locked.
    assert!(locked_kib(pid) >= 4, "no locked memory with mlock on");
    drop(partial);
    drop(sk);
    (s, answered.load(Ordering::Relaxed))
}

/// Waits (bounded) until what was written on `client` has been read by the process `pid` on
/// the other end: the client's send queue is empty and the server's receive queue too
/// (`/proc/PID/net/tcp`).
async fn wait_read_by_peer(pid: u32, client: &std::net::TcpStream) {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        std::net::SocketAddr::V6(_) => panic!("the proxy listens on IPv4 loopback"),
    };
    let (ours, theirs) = (hex(client.local_addr().unwrap()), hex(client.peer_addr().unwrap()));
    // (local, remote) -> (send queue, receive queue)
    let queues = |local: &str, remote: &str| {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1] == local && f[2] == remote).then(|| {
                let (tx, rx) = f[4].split_once(':').unwrap();
                (u64::from_str_radix(tx, 16).unwrap(), u64::from_str_radix(rx, 16).unwrap())
            })
        })
    };
    bounded("the proxy to read the partial head", async {
        loop {
            let sent = queues(&ours, &theirs).is_some_and(|(tx, _)| tx == 0);
            let read = queues(&theirs, &ours).is_some_and(|(_, rx)| rx == 0);
            if sent && read {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// `VmLck` of `/proc/PID/status`: memory locked with mlock, in KiB.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).expect("VmLck in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Prints the figure and fails on any retired copy or writable mapping not read. The last of
/// the values is the current one; with `heap`, the last is the request head and the current
/// value the one before it.
fn report_and_check(what: &str, s: &Scan, requests: u64) {
    report_and_check_with(what, s, requests, false)
}

fn report_and_check_with(what: &str, s: &Scan, requests: u64, heap: bool) {
    let heap_found = heap.then(|| &s.found[s.found.len() - 1]);
    let rotations = s.found.len() - 1 - heap as usize;
    let retired: usize = s.found[..rotations].iter().map(Vec::len).sum();
    let mut where_found: Vec<&String> = s.found[..rotations].iter().flatten().collect();
    where_found.dedup();
    eprintln!(
        "memory scan ({what}): {} regions, {:.1} MiB; {rotations} rotations with {requests} requests; current value \
         found {} times; retired values found {retired} times ({where_found:?})",
        s.regions,
        s.bytes as f64 / (1024.0 * 1024.0),
        s.found[rotations].len(),
    );
    assert!(s.unreadable.is_empty(), "writable mappings the scan could not read: {:?}", s.unreadable);
    assert!(!s.found[rotations].is_empty(), "the scan did not find the current value: it cannot see the token store");
    if let Some(found) = heap_found {
        eprintln!("memory scan ({what}): the request head held in a connection's buffer found in {found:?}");
        assert!(!found.is_empty(), "the scan did not find a request head held on the heap: it cannot see the heap");
    }
    assert_eq!(retired, 0, "copies of retired token values remain in memory: {where_found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_oauth2_tokens_leave_no_copy_in_memory() {
    const REFRESHES: usize = 12;
    let oidc = Oidc::start(r#"[{"client_id":"scan","client_secret":"scan-client-secret"}]"#, 600, 0);
    let up = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "{LISTEN}\n[hardening]\nno_dump = false\nmlock = false\n\n[[routes]]\nname = \"scan2\"\nprefix = \"/scan\"\n\
             upstream = \"{}\"\ntoken = \"scan2\"\n\n[tokens.scan2]\nsource = \"oauth2\"\ntoken_url = \"{}\"\n\
             client_id = \"scan\"\nclient_secret = {{ env = \"SK_SCAN_SECRET\" }}\noverlap = \"0s\"\n",
            up.url, oidc.token_url
        ),
    )
    .unwrap();
    let sk = Sidekey::spawn(&config, &[("SK_SCAN_SECRET", "scan-client-secret")]);
    let c = client();
    // Each forced refresh fetches a new access token from the provider; requests carry it.
    let mut values: Vec<String> = Vec::new();
    let mut requests = 0;
    for n in 0..=REFRESHES {
        if n > 0 {
            let r = post(&c, &format!("http://{}/tokens/scan2/refresh", sk.admin)).await;
            assert_eq!(r.json()["result"], "rotated", "{}", r.text());
        }
        for i in 0..20 {
            assert_eq!(get(&c, &format!("http://{}/scan/r{n}-{i}", sk.proxy)).await.status, 200);
            requests += 1;
        }
        let sent = up.last().headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
        assert!(!values.contains(&sent), "refresh {n} did not change the token");
        values.push(sent);
    }
    let s = scan(sk.child.id(), &values);
    assert_eq!(locked_kib(sk.child.id()), 0, "memory locked with mlock = false");
    drop(sk);
    report_and_check("oauth2 token", &s, requests);
}

/// A call to OpenBao's API with its root token.
async fn bao_root(bao: &support::servers::Bao, path: &str, body: serde_json::Value) -> serde_json::Value {
    let req = http::Request::post(format!("http://{}/v1/{path}", bao.addr))
        .header("x-vault-token", support::servers::BAO_ROOT)
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let a = send(&client(), req).await;
    assert!(a.status.is_success(), "bao {path}: {} {}", a.status, a.text());
    serde_json::from_str(&a.text()).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_vault_client_tokens_and_identity_jwts_leave_no_copy_in_memory() {
    const LOGINS: usize = 8;
    let bao = support::servers::Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    // OpenBao logs no client token (and takes no audit device through its API): a relay in
    // front of it, which sidekey talks to, keeps the login answers.
    let answers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let relay = relay(bao.addr, answers.clone()).await;
    let key = rcgen::KeyPair::generate().unwrap();
    bao_root(&bao, "sys/auth/jwt", serde_json::json!({"type": "jwt"})).await;
    bao_root(&bao, "auth/jwt/config", serde_json::json!({"jwt_validation_pubkeys": [key.public_key_pem()]})).await;
    bao_root(
        &bao,
        "sys/policies/acl/kv",
        serde_json::json!({"policy": "path \"secret/data/scan\" { capabilities = [\"read\"] }"}),
    )
    .await;
    bao_root(
        &bao,
        "auth/jwt/role/scan",
        serde_json::json!({"role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub", "token_policies": ["kv"], "token_ttl": "1h"}),
    )
    .await;
    bao.put("scan", serde_json::json!({"token": "scan-kv-value-3d9f1e"})).await;
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let jwt_file = dir.path().join("jwt");
    let mut jwts = Vec::new();
    let mut new_jwt = |n: usize| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = serde_json::json!({"sub": format!("scan-{n}"), "aud": "vault", "iat": now, "exp": now + 600, "jti": format!("scanjti{n:03}x{:016x}", fastrand::u64(..))});
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &signing)
            .unwrap();
        std::fs::write(&jwt_file, &jwt).unwrap();
        jwts.push(jwt);
    };
    new_jwt(0);
    let up = Upstream::plain().await;
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "{LISTEN}\n[hardening]\nno_dump = false\nmlock = false\n\n[[routes]]\nname = \"kv\"\nprefix = \"/kv\"\n\
             upstream = \"{}\"\ntoken = \"kv\"\n\n[tokens.kv]\nsource = \"http\"\nurl = \"http://{}/v1/secret/data/scan\"\n\
             pointer = \"/data/data/token\"\nrefresh = \"1h\"\n\
             login = {{ vault_jwt = {{ path = \"auth/jwt\", role = \"scan\", jwt = {{ file = {:?} }} }} }}\n",
            up.url, relay, jwt_file
        ),
    )
    .unwrap();
    let sk = Sidekey::spawn(&config, &[]);
    let c = client();
    let mut requests = 0;
    for n in 0..=LOGINS {
        if n > 0 {
            // The client token is revoked: the next read is refused, and the one after logs in
            // again with the identity token the "kubelet" has rotated meanwhile.
            new_jwt(n);
            let last = answers.lock().unwrap().iter().rev().find_map(|a| {
                serde_json::from_str::<serde_json::Value>(a).ok()?["auth"]["client_token"].as_str().map(str::to_owned)
            });
            bao_root(&bao, "auth/token/revoke", serde_json::json!({"token": last.expect("a login answer")})).await;
            let r = post(&c, &format!("http://{}/tokens/kv/refresh", sk.admin)).await.json();
            assert_eq!(r["result"], "failed", "{r}");
            let r = post(&c, &format!("http://{}/tokens/kv/refresh", sk.admin)).await.json();
            assert_eq!(r["result"], "unchanged", "{r}");
        }
        for i in 0..10 {
            assert_eq!(get(&c, &format!("http://{}/kv/r{n}-{i}", sk.proxy)).await.status, 200);
            requests += 1;
        }
    }
    let client_tokens: Vec<String> = answers
        .lock()
        .unwrap()
        .iter()
        .filter_map(|a| serde_json::from_str::<serde_json::Value>(a).ok())
        .filter_map(|e| e["auth"]["client_token"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(client_tokens.len(), LOGINS + 1, "one login per round");
    // The identity tokens first (none is kept after its login), then the client tokens, the last
    // of which is the current one.
    let mut needles = jwts.clone();
    needles.extend(client_tokens);
    let s = scan(sk.child.id(), &needles);
    drop(sk);
    let jwt_copies: usize = s.found[..jwts.len()].iter().map(Vec::len).sum();
    let client = Scan {
        regions: s.regions,
        bytes: s.bytes,
        unreadable: s.unreadable.clone(),
        found: s.found[jwts.len()..].to_vec(),
    };
    report_and_check("vault client token", &client, requests);
    assert_eq!(jwt_copies, 0, "copies of identity JWTs remain in memory: {:?}", &s.found[..jwts.len()]);
}

/// A plain HTTP relay to `target` on a free port, keeping the answers' bodies.
async fn relay(target: std::net::SocketAddr, answers: Arc<std::sync::Mutex<Vec<String>>>) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let answers = answers.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let answers = answers.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let mut out = http::Request::builder()
                            .method(parts.method)
                            .uri(format!("http://{target}{}", parts.uri.path_and_query().unwrap()));
                        for (k, v) in &parts.headers {
                            out = out.header(k, v);
                        }
                        let a = send(&client(), out.body(http_body_util::Full::new(body)).unwrap()).await;
                        let text = a.text();
                        answers.lock().unwrap().push(text.clone());
                        let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
                        *resp.status_mut() = a.status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
