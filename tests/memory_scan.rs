//! Retired tokens leave no copies in sidekey's memory. The real binary runs with a token that is
//! rotated many times while keep-alive clients send requests through it (a file token; an
//! OAuth2 token from a real provider, whose responses pass through hyper and serde_json); once
//! the requests are done, every readable mapping of the process (`/proc/PID/maps` and
//! `/proc/PID/mem`) is searched for every value it ever held. The current value must be found
//! (the scan works); the retired ones must not.

mod support;

use std::io::{BufRead, Read, Seek, SeekFrom};
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
    /// Per value searched: where each copy was found (the mapping's path or kind).
    found: Vec<Vec<String>>,
}

/// Reads every readable mapping of `pid` and finds each of `needles` in it.
fn scan(pid: u32, needles: &[String]) -> Scan {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem =
        std::fs::File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| panic!("cannot open /proc/{pid}/mem: {e}"));
    let mut scan = Scan { regions: 0, bytes: 0, found: vec![Vec::new(); needles.len()] };
    let finders: Vec<memchr::memmem::Finder> =
        needles.iter().map(|n| memchr::memmem::Finder::new(n.as_bytes())).collect();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        let name = parts.nth(3).unwrap_or("[anonymous]").to_owned();
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" || name == "[vvar_vclock]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
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
        cmd.args(["run", "--log-format", "json", "-c"]).arg(config).env("RUST_LOG", "info");
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
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
             token = \"scan\"\n\n[tokens.scan]\nsource = \"file\"\npath = {:?}\noverlap = \"0s\"\n",
            up.url,
            token.display().to_string()
        ),
    )
    .unwrap();
    let sk = Sidekey::spawn(&config, &[]);
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
    // buffer until its next one (README, "What it does not protect against"); under load the
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

    let s = scan(pid, &values);
    // [hardening] mlock is on by default: the token's pages are locked.
    assert!(locked_kib(pid) >= 4, "no locked memory with mlock on");
    drop(sk);
    report_and_check("file token", &s, answered.load(Ordering::Relaxed));
}

/// `VmLck` of `/proc/PID/status`: memory locked with mlock, in KiB.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).expect("VmLck in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Prints the figure and fails on any retired copy. The last of the values is the current one.
fn report_and_check(what: &str, s: &Scan, requests: u64) {
    let rotations = s.found.len() - 1;
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
    assert!(!s.found[rotations].is_empty(), "the scan did not find the current value: it cannot see the token store");
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
