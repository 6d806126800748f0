//! `--unix`: the Unix-socket listener against TCP loopback, for sidekey
//! (`listen.proxy = "unix:PATH"` against `"127.0.0.1:0"`) and nginx (`listen unix:PATH;`
//! against `listen 127.0.0.1:PORT;`), the same plain origin behind all four, and the origin
//! directly (TCP) for the added latency.
//!
//! wrk speaks only TCP, so both sides of each pair are measured by this program's own clients,
//! the same client for the Unix socket and for TCP:
//! - concurrency 1: the `--c1-client` of `--c1-exact` (one keep-alive connection, each request
//!   timed to the ns), pinned beside the proxy and the origin on CPU 0 as wrk's latency run is:
//!   p50, p99, mean, and each added to the direct run of the same round;
//! - concurrency 64: `--c64-client` (64 keep-alive connections driven by one thread, as
//!   `wrk -t1 -c64` does, each sending its next request once its answer is in), on CPU 0 with
//!   the proxy alone on CPU 1: requests/s and the proxy's CPU time per request (the kernel's
//!   part apart). It parses less than wrk (the head's end and `Content-Length`) and keeps no
//!   latency histogram, so its requests/s are not wrk's; the TCP and Unix figures beside each
//!   other are from the same client.
//!
//! Targets alternate within each round; the table shows each figure's median over the
//! rounds, and the Unix-to-TCP ratios per proxy of the medians.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{median, Origin, Server};

/// A client's connection: TCP or a Unix socket.
pub enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a client connects, from a target URL: `http://HOST:PORT/PATH`, or `unix:SOCKET`
/// (the path `/x`, `Host: localhost`).
#[derive(Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// The target, the `Host` to send and the request path of `url`.
pub fn parse(url: &str) -> Result<(Target, String, String), String> {
    if let Some(socket) = url.strip_prefix("unix:") {
        return Ok((Target::Unix(PathBuf::from(socket)), "localhost".into(), "/x".into()));
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: the clients speak plain HTTP"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    Ok((Target::Tcp(authority.to_owned()), authority.to_owned(), path.to_owned()))
}

/// A blocking connection to `target`: `TCP_NODELAY` on TCP, reads bounded to 10 s.
pub fn connect(target: &Target) -> Result<Stream, String> {
    let timeout = Some(Duration::from_secs(10));
    match target {
        Target::Tcp(a) => {
            let s = std::net::TcpStream::connect(a).map_err(|e| format!("{a}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            Ok(Stream::Tcp(s))
        }
        Target::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p).map_err(|e| format!("{}: {e}", p.display()))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            Ok(Stream::Unix(s))
        }
    }
}

/// Waits (10 s at most) until a Unix socket accepts connections.
pub fn wait_unix(path: &std::path::Path, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} is not listening on {} after 10 s", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The length of the whole answer at the start of `buf` once its head is in (its head and its
/// `Content-Length` body), `None` before that.
fn answer_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    if !buf.starts_with(b"HTTP/1.1 200") {
        let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(format!("unexpected answer: {}", String::from_utf8_lossy(line)));
    }
    Ok(Some(head + 4 + content_length(&buf[..head])?))
}

/// Whether an answer's head says `Connection: close`: the server closes the connection after
/// it (nginx does after `keepalive_requests`), which is no error.
fn closes(buf: &[u8]) -> bool {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf, |end| &buf[..end]);
    field(head, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
}

/// The value of the first field named `name` in an answer's head, trimmed.
fn field<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = l.iter().position(|&b| b == b':')?;
        l[..colon].eq_ignore_ascii_case(name).then(|| l[colon + 1..].trim_ascii())
    })
}

/// The `Content-Length` of an answer's head (status line and fields, without the blank line).
pub fn content_length(head: &[u8]) -> Result<usize, String> {
    field(head, b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        .ok_or_else(|| "an answer without Content-Length".to_owned())
}

/// The `--c64-client URL CONNECTIONS SECS` mode: `CONNECTIONS` keep-alive connections on one
/// thread (a current-thread runtime), each sending `GET` (or the `--post` document) once its
/// previous answer is whole, for `secs`. Returns the JSON line the harness reads: requests
/// completed, errors (a connection closed or failing within an answer: opened again; one the
/// server closes after an answer that says so is opened again without one), the
/// time taken.
pub fn c64_client(url: &str, connections: usize, secs: f64) -> Result<String, String> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    let (target, authority, path) = parse(url)?;
    let request = super::load_request(&authority, &path).into_bytes();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    async fn open(target: &Target) -> std::io::Result<Box<dyn IoStream>> {
        Ok(match target {
            Target::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Target::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        })
    }
    trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}
    rt.block_on(async {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (target, request) = (target.clone(), request.clone());
            tasks.spawn(async move {
                let (mut done, mut errors) = (0u64, 0u64);
                let mut buf = vec![0u8; 65536];
                'connection: while Instant::now() < end {
                    let Ok(mut s) = open(&target).await else {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    while Instant::now() < end {
                        if s.write_all(&request).await.is_err() {
                            errors += 1;
                            continue 'connection;
                        }
                        let mut got = 0;
                        loop {
                            let n = match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[got..])).await {
                                Ok(Ok(n)) => n,
                                _ => 0,
                            };
                            if n == 0 || got + n == buf.len() {
                                errors += 1;
                                continue 'connection;
                            }
                            got += n;
                            match answer_len(&buf[..got]) {
                                Ok(Some(need)) if got >= need => break,
                                Ok(_) => {}
                                Err(_) => {
                                    errors += 1;
                                    continue 'connection;
                                }
                            }
                        }
                        done += 1;
                        if closes(&buf[..got]) {
                            continue 'connection;
                        }
                    }
                }
                (done, errors)
            });
        }
        let (mut requests, mut errors) = (0u64, 0u64);
        while let Some(r) = tasks.join_next().await {
            let (d, e) = r.map_err(|e| e.to_string())?;
            requests += d;
            errors += e;
        }
        let took = start.elapsed();
        Ok(json!({ "requests": requests, "errors": errors, "duration_us": took.as_micros() as u64 }).to_string())
    })
}

/// One `--c64-client` run, pinned beside the load generator's CPU: (requests, errors, seconds).
fn c64(url: &str, secs: u64) -> Result<(u64, u64, f64), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = super::pinned(0, &me.to_string_lossy())
        .args(["--c64-client", url, "64", &secs.to_string()])
        .output()
        .map_err(|e| format!("c64 client: {e}"))?;
    let v = super::json_line(&out, "C64_JSON ", "the c64 client")?;
    let n = |k: &str| v[k].as_u64().ok_or_else(|| format!("c64 client: no {k} in {v}"));
    Ok((n("requests")?, n("errors")?, n("duration_us")? as f64 / 1e6))
}

/// One target's figures in one round.
#[derive(Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    mean: f64,
    rps: f64,
    cpu: Option<f64>,
    kernel: Option<f64>,
    errors: u64,
}

fn measure(url: &str, server: Option<&Server>, secs: u64) -> Result<Figures, String> {
    // A short warm-up fills pools and caches.
    c64(url, 1)?;
    let pids = server.map(Server::pids).unwrap_or_default();
    super::move_to(&pids, 0)?;
    let exact = super::exact_c1(url, secs);
    super::move_to(&pids, 1)?;
    let exact = exact?;
    let before = server.map(Server::cpu_us);
    let (requests, errors, took) = c64(url, secs)?;
    let cpu = server.zip(before).map(|(s, b)| {
        let (after, n) = (s.cpu_us(), requests.max(1) as f64);
        ((after.0 - b.0) as f64 / n, (after.1 - b.1) as f64 / n)
    });
    Ok(Figures {
        p50: exact.p50,
        p99: exact.p99,
        mean: exact.mean,
        rps: requests as f64 / took,
        cpu: cpu.map(|c| c.0),
        kernel: cpu.map(|c| c.1),
        errors,
    })
}

const TARGETS: [&str; 5] = ["direct", "sidekey tcp", "sidekey unix", "nginx tcp", "nginx unix"];

fn start(opts: &super::Opts, origin: &Origin, target: &str) -> Result<Server, String> {
    let unix = target.ends_with(" unix");
    if target.starts_with("sidekey") {
        super::start_sidekey(origin, "sidekey", &opts.sidekey, super::Run { unix, ..super::Run::default() })
    } else {
        super::start_nginx_with(origin, super::NginxOpts { unix, ..Default::default() })
    }
}

/// The Unix-socket runs (see the module doc).
pub fn unix_runs(opts: &super::Opts, origin: &Origin, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<Value>, String> {
    let mut servers: Vec<(&str, Server)> = Vec::new();
    for target in TARGETS.iter().skip(1).filter(|t| wanted(t.split(' ').next().unwrap())) {
        match start(opts, origin, target) {
            Ok(s) => servers.push((target, s)),
            Err(e) => eprintln!("load: unix rows: skipping {target}: {e}"),
        }
    }
    let direct_url = format!("http://{}/x", origin.plain);
    let rounds = opts.rounds.max(1);
    let mut figures: Vec<(&str, Vec<Figures>)> = vec![("direct", Vec::new())];
    figures.extend(servers.iter().map(|(t, _)| (*t, Vec::new())));
    for round in 1..=rounds {
        eprintln!("load: unix socket against TCP, round {round} of {rounds}");
        let mut order: Vec<usize> = (0..figures.len()).collect();
        let shift = (round - 1) % order.len();
        order.rotate_left(shift);
        for i in order {
            let server = i.checked_sub(1).map(|j| &servers[j].1);
            let url = server.map_or(direct_url.as_str(), |s| s.url.as_str());
            let f = measure(url, server, opts.duration)?;
            eprintln!(
                "load:   {:13} c1 p50 {:.2} µs p99 {:.2} µs | c64 {:.0} req/s, {} µs CPU/req, {} errors",
                figures[i].0,
                f.p50,
                f.p99,
                f.rps,
                f.cpu.map_or("-".into(), |c| format!("{c:.1}")),
                f.errors
            );
            figures[i].1.push(f);
        }
    }
    drop(servers);
    let med = |f: &[Figures], g: fn(&Figures) -> f64| median(f.iter().map(g).collect());
    let direct = figures[0].1.clone();
    let (d50, d99) = (med(&direct, |f| f.p50), med(&direct, |f| f.p99));
    let mut rows: Vec<Value> = figures
        .iter()
        .map(|(target, f)| {
            let cpu: Vec<f64> = f.iter().filter_map(|x| x.cpu).collect();
            let kernel: Vec<f64> = f.iter().filter_map(|x| x.kernel).collect();
            let (p50, p99) = (med(f, |x| x.p50), med(f, |x| x.p99));
            let proxied = *target != "direct";
            json!({
                "target": target,
                "listener": if target.ends_with(" unix") { "unix" } else { "tcp" },
                "p50_us": p50, "p99_us": p99, "mean_us": med(f, |x| x.mean),
                "added_p50_us": proxied.then_some(p50 - d50), "added_p99_us": proxied.then_some(p99 - d99),
                "rps_c64": med(f, |x| x.rps),
                "cpu_us_per_request": (!cpu.is_empty()).then(|| median(cpu)),
                "kernel_us_per_request": (!kernel.is_empty()).then(|| median(kernel)),
                "errors": f.iter().map(|x| x.errors).sum::<u64>(),
                "rounds": f.len(),
            })
        })
        .collect();
    // Unix against TCP, per proxy: added p50, added p99, CPU per request.
    let ratios: Vec<(String, Value)> = ["sidekey", "nginx"]
        .iter()
        .filter_map(|proxy| {
            let row = |l: &str| rows.iter().find(|r| r["target"] == format!("{proxy} {l}"));
            let (unix, tcp) = (row("unix")?, row("tcp")?);
            let ratio = |k: &str| Some(unix[k].as_f64()? / tcp[k].as_f64()?);
            Some((
                format!("{proxy} unix"),
                json!({ "added_p50": ratio("added_p50_us"), "added_p99": ratio("added_p99_us"),
                        "cpu_us_per_request": ratio("cpu_us_per_request"), "rps_c64": ratio("rps_c64") }),
            ))
        })
        .collect();
    for (target, r) in ratios {
        if let Some(row) = rows.iter_mut().find(|x| x["target"] == target) {
            row["versus_tcp"] = r;
        }
    }
    Ok(rows)
}

/// The Unix-socket table.
pub fn print(rows: &[Value]) {
    println!(
        "\n| listener (own clients: c1 timed to the ns, c64 one thread) | p50 µs | p99 µs | mean µs | added p50 | added p99 | \
         req/s (c64) | CPU µs/req | of it kernel | errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let f = |k: &str, d: usize| r[k].as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
        let added = |k: &str| r[k].as_f64().map_or("-".into(), |x| format!("{x:+.2}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["target"].as_str().unwrap_or_default(),
            f("p50_us", 2),
            f("p99_us", 2),
            f("mean_us", 2),
            added("added_p50_us"),
            added("added_p99_us"),
            f("rps_c64", 0),
            f("cpu_us_per_request", 1),
            f("kernel_us_per_request", 1),
            r["errors"]
        );
    }
    for r in rows.iter().filter(|r| r["versus_tcp"].is_object()) {
        let v = &r["versus_tcp"];
        let f = |k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "\n{} / its TCP listener: added p50 x{}, added p99 x{}, CPU per request x{}, req/s x{}",
            r["target"].as_str().unwrap_or_default(),
            f("added_p50"),
            f("added_p99"),
            f("cpu_us_per_request"),
            f("rps_c64")
        );
    }
}
