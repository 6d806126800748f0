//! End-to-end load harness: sidekey against a direct connection, nginx and HAProxy doing the
//! same injection, on loopback, in one run.
//!
//! ```sh
//! benches/load/setup.sh                       # wrk, nginx, haproxy from Debian (once)
//! cargo bench --bench load                    # 3 rounds of 10 s runs, table + JSON
//! cargo bench --bench load -- --rotate 100ms  # and the rotation runs
//! ```
//!
//! A fast origin (this program in `--origin` mode: hyper, one thread) answers `200 ok` and
//! tracks the `Authorization` values it sees. Each target is measured with wrk (HTTP/1.1,
//! keep-alive, `GET /x` with `User-Agent` and `Accept` as a client library sends them, from
//! `benches/load/report.lua`): at concurrency 1 for the latency percentiles (p50/p90/p99/p99.9,
//! in whole µs as wrk's histogram keeps them) and the mean (to a hundredth of a µs: a finer
//! figure for proxies that differ by less than a µs), at concurrency
//! 64 for requests/s and the proxy's CPU time per request (utime + stime of its processes from
//! `/proc`, over the requests wrk completed), and the proxy's peak RSS (`VmHWM`; each proxy's
//! binary is dropped from the page cache before it starts, so that its text is read in the same
//! way for each). Targets alternate within each round and the table shows each figure's median
//! over the rounds, with ratios against the direct run of the same rounds.
//!
//! Pinning (`taskset`, when there are at least 2 CPUs), as the issue's reference figures were
//! measured: each proxy runs with one worker (sidekey: one tokio worker, as its CPU set has one
//! CPU; nginx: `worker_processes 1`; HAProxy: `nbthread 1`) beside the load generator for the
//! latency run (wrk, the origin and the proxy on CPU 0) and alone on CPU 1 for the throughput
//! run (its threads moved there with `taskset -a -p`). On its own CPU at concurrency 1, a proxy
//! sleeps between the request and the response and this machine takes ~40 µs to wake a
//! sleeping CPU, twice per request: every proxy measured ~+100 µs at p50 that way, nearly all
//! of it the wake-ups.
//!
//! `--c1-exact` adds, per target and round, a second concurrency-1 run right after wrk's, by
//! this program's own client (`--c1-client URL SECS`, pinned as wrk is): one keep-alive
//! connection, each request timed from its write to its answer's last byte to the ns, for
//! p10/p25/p50/p75/p90/p99 and the mean to a hundredth of a µs, in a table of their own with
//! sidekey's ratios to each peer round by round. wrk keeps whole µs, too coarse for proxies
//! that differ by less than one; the two clients also load the CPU they share differently.
//!
//! `--rotate INTERVAL` adds, per proxy, a concurrency-64 run while the token changes every
//! INTERVAL (sidekey: its token file is replaced; nginx: its config include is rewritten and
//! the master gets SIGHUP, as `nginx -s reload` does; HAProxy: `set map` on its runtime API),
//! reported against a run without rotation right before it: errors, throughput and p99 ratios,
//! requests the origin saw with a token older than one it had already seen (stale), how long
//! after each change (from its end: the file renamed, the signal sent, the map set) the origin
//! first saw the new token, how long the harness's own change took at most (its thread may
//! wait to run on the busy machine), and new upstream connections.
//!
//! `--idle` (10 000 connections; `--idle-connections N` for another count) adds, per proxy and
//! round (`--rounds`, at least 1), a fresh instance holding N idle keep-alive connections that
//! have each served one request: the bytes of `VmRSS` each costs, the accepted count checked
//! (`benches/load/idle.rs`); with `--baseline`, that build too, beside sidekey.
//!
//! `--scaling`: sidekey `[listen] workers = 1` against `= 2`, its default runtime on one CPU
//! against two, nginx `worker_processes 1` against `2`, at concurrency 256 with nothing pinned
//! to one CPU (requests/s, CPU per request), and a rotation run at 2 workers
//! (`benches/load/scaling.rs`).
//!
//! `--bodies`: 1 MiB and 16 MiB answers and uploads at concurrency 16, against nginx with its
//! buffering on and off and HAProxy: MiB/s, CPU per request, peak RSS
//! (`benches/load/bodies.rs`).
//!
//! `--h2`: HTTP/2 against an origin serving it over TLS: h2c clients (h2load) and HTTP/1.1
//! clients (wrk) through sidekey, HAProxy and nginx (`grpc_pass`, its one HTTP/2 upstream, and
//! `proxy_pass` over HTTP/1.1) (`benches/load/h2.rs`), with the upstream connections each
//! proxy instance opened.
//!
//! `--unix`: sidekey (`listen.proxy = "unix:PATH"`) and nginx (`listen unix:PATH;`) on a Unix
//! socket against each on TCP loopback, the same origin behind them: added latency at
//! concurrency 1 (p50/p99, by the `--c1-exact` client, which also speaks `unix:PATH`) and
//! requests/s and CPU per request at concurrency 64 (by this program's `--c64-client`, one
//! thread driving 64 keep-alive connections: wrk has no Unix sockets) (`benches/load/unix.rs`).
//!
//! `--grpc`: a unary gRPC call (grpcio's server over TLS) directly, through sidekey and through
//! nginx `grpc_pass`, h2c in, by this program's `--grpc-client` (one HTTP/2 connection, one
//! call at a time, real gRPC frames, each call timed to its trailers): the added p50/p99 at
//! concurrency 1 and the proxy's CPU per call (`benches/load/grpc.rs`).
//!
//! Each run also writes its picture beside the JSON (`result.svg`, or `--svg FILE`): latency
//! percentiles at concurrency 1, requests/s and CPU per request at 64, bytes per idle
//! connection, and the scaling, body, HTTP/2, Unix-socket and gRPC rows when the run had them
//! (`benches/load/svg.rs`); `--svg-from JSON` draws it again from an earlier result.
//!
//! `--soak SECS` adds, per proxy, a concurrency-64 run of SECS with its RSS read every 10 s
//! (memory must stay flat).
//!
//! `--baseline BIN` adds another sidekey binary (say, one built before a change) as target
//! `baseline`, measured in the same rounds: an optimisation's before/after figure.
//! `--sidekey BIN` measures that binary as `sidekey` instead of this tree's release build (two older builds
//! against each other, say a variant with one setting changed against the build it came from).
//!
//! `--tls-upstream`: the proxies reach the origin over TLS 1.3 (HTTP/1.1, pooled connections;
//! the origin's self-signed certificate is trusted through each proxy's CA setting and verified:
//! sidekey's route `ca_file`, nginx `proxy_ssl_verify`, HAProxy `verify required`). The client
//! side stays plain HTTP, and the direct runs go to the origin's plain port.
//!
//! `--audit`: sidekey runs with its audit log on (`[audit] path`), as for the rotation runs with
//! the audit log writing an event per change.
//!
//! `--callgrind N` (with `--rounds 0` to skip the rest): instructions per request in sidekey's
//! process, counted by valgrind's callgrind over N keep-alive requests (and in the baseline's,
//! with `--baseline`): stable figures for a change too small for timings on a noisy machine.
//! Each binary runs twice under callgrind, with N requests and with none; the difference over
//! N is the figure. It is counted on two paths: the steady one (the retry window after a token
//! change off, `overlap = "0s"`) and the one every request takes within a rotation's retry
//! window (`overlap`: 30 s after each change by default, and all the time in the rotation
//! runs), where the request is kept so that a 401 can be retried with the previous token. The
//! instructions of memset, memcpy and memmove are also given apart: callgrind counts every
//! byte a `rep stos` fills as an instruction, so zeroing and copying weigh far more there than
//! in cycles. `--callgrind-out DIR` keeps the profiles there (`sidekey-N.out`,
//! `sidekey-fresh-N.out`, `baseline-0.out`, ...) for `callgrind_annotate`.
//!
//! `--intercept` (with `--rounds 0` to skip the rest): the cost of HTTPS interception, for
//! clients that only speak `https://` and reach sidekey through `CONNECT`. A client in this
//! program (rustls, HTTP/1.1 keep-alive, one request at a time for `--duration` seconds per
//! target, targets alternating over `--rounds-intercept N` rounds, 3 by default) measures: the
//! origin directly over TLS; sidekey's ordinary route (plain HTTP in, TLS to the origin); and
//! the same route through an intercepted tunnel (TLS to sidekey with a leaf it minted, TLS on
//! to the origin). It reports p50/p99 latency, sidekey's CPU per request, and the cost of a new
//! tunnel (CONNECT plus the TLS handshake with a cached leaf) against a new TLS connection to
//! the origin.
//!
//! `--link-order FILE` (and nothing else): writes the order the release binary's code is linked
//! in (`proxy/link-order.txt`, read by `build.rs`) from callgrind profiles of sidekey serving
//! requests: what runs per request first, then what runs at start-up. Write it again after a
//! dependency or feature change (symbol names change with them); the harness says how many of
//! its names the measured binary still has.
//!
//! `--post BYTES`: every client of the comparison rounds (wrk, through `report.lua`, and this
//! program's own: `--c1-exact`, `--callgrind`) sends `POST /x` with a JSON document of BYTES
//! bytes (`Content-Type: application/json`, `Content-Length`; at least 11) instead of
//! `GET /x`, as an API client posts one. The origin answers without reading it, as many do.
//!
//! CPU per request is also split out: the kernel's part (`stime`) is the socket work every proxy
//! pays alike (two reads and two writes per request on loopback); the rest is the proxy's own.
//!
//! Options: `--duration SECS` (10), `--rounds N` (3), `--out FILE` (target/load/result.json),
//! `--only sidekey,nginx,...`, `--rounds 0` to skip the comparison rounds, `--c1-exact`,
//! `--post BYTES`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

#[path = "load/bodies.rs"]
mod bodies;
#[path = "load/grpc.rs"]
mod grpc;
#[path = "load/h2.rs"]
mod h2;
#[path = "load/idle.rs"]
mod idle;
#[path = "load/scaling.rs"]
mod scaling;
#[path = "load/svg.rs"]
mod svg;
#[path = "load/unix.rs"]
mod unix;

const SIDEKEY: &str = env!("CARGO_BIN_EXE_sidekey");
/// `--post BYTES` as the harness's processes (wrk's `report.lua`, the clients) see it.
const POST_VAR: &str = "LOAD_POST_BYTES";

/// The request the harness's clients send on a keep-alive connection: `GET`, as a client
/// library sends it, or with `--post` a `POST` of a JSON document as wrk's script makes it.
fn load_request(authority: &str, path: &str) -> String {
    let common = format!("{path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: load\r\nAccept: */*\r\n");
    let Some(bytes) = std::env::var(POST_VAR).ok().and_then(|v| v.parse::<usize>().ok()) else {
        return format!("GET {common}\r\n");
    };
    // `{"data":"xxx"}`: the same document as `report.lua`'s.
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(bytes.saturating_sub(11)));
    format!("POST {common}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}
const WRK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/load/report.lua");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--origin") {
        let cert_out = args.iter().position(|a| a == "--cert-out").map(|i| PathBuf::from(&args[i + 1]));
        let threads = args.iter().position(|a| a == "--origin-threads").map_or(1, |i| args[i + 1].parse().unwrap());
        origin(cert_out, threads, args.iter().any(|a| a == "--origin-h2"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--c1-client") {
        match c1_client(&args[i + 1], args[i + 2].parse().expect("--c1-client URL SECS")) {
            Ok(line) => println!("C1_JSON {line}"),
            Err(e) => {
                eprintln!("load: c1 client: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--grpc-client") {
        let secs = args.get(i + 2).and_then(|v| v.parse().ok()).expect("--grpc-client URL SECS CA");
        let ca = args.get(i + 3).filter(|c| *c != "-").map(Path::new);
        match grpc::grpc_client(&args[i + 1], secs, ca) {
            Ok(line) => println!("GRPC_JSON {line}"),
            Err(e) => {
                eprintln!("load: gRPC client: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--c64-client") {
        let n =
            |j: usize| args.get(i + j).and_then(|v| v.parse::<f64>().ok()).expect("--c64-client URL CONNECTIONS SECS");
        match unix::c64_client(&args[i + 1], n(2) as usize, n(3)) {
            Ok(line) => println!("C64_JSON {line}"),
            Err(e) => {
                eprintln!("load: c64 client: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let opts = Opts::parse(&args);
    if let Some(bytes) = opts.post {
        // For wrk's script and this program's clients, which run as processes of their own.
        std::env::set_var(POST_VAR, bytes.to_string());
    }
    eprintln!("load: sidekey is {}", opts.sidekey.display());
    if let Err(e) = run(&opts) {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

struct Opts {
    /// The sidekey binary measured as "sidekey" (this tree's release build, unless `--sidekey
    /// PATH`).
    sidekey: PathBuf,
    duration: u64,
    rounds: usize,
    rotate: Option<Duration>,
    soak: Option<u64>,
    baseline: Option<PathBuf>,
    out: PathBuf,
    only: Option<Vec<String>>,
    tls_upstream: bool,
    audit: bool,
    callgrind: Option<u64>,
    callgrind_out: Option<PathBuf>,
    intercept: Option<usize>,
    link_order: Option<PathBuf>,
    /// Also time each request at concurrency 1 to the ns, with this program's own client.
    exact_c1: bool,
    /// Requests are `POST`s of a JSON document this long (see [`POST_VAR`]).
    post: Option<usize>,
    /// Idle keep-alive connections per proxy for the memory-per-connection runs (`--idle`).
    idle: Option<usize>,
    /// The worker-scaling runs (`--scaling`).
    scaling: bool,
    /// The large-body runs (`--bodies`).
    bodies: bool,
    /// The HTTP/2 runs (`--h2`).
    h2: bool,
    /// The Unix-socket listener against TCP (`--unix`).
    unix: bool,
    /// A unary gRPC call's added latency (`--grpc`).
    grpc: bool,
    /// Where the run's picture goes (beside `out` unless given).
    svg: Option<PathBuf>,
    /// Draw the picture of this earlier result and stop.
    svg_from: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut o = Opts {
            sidekey: PathBuf::new(), // set below
            duration: 10,
            rounds: 3,
            rotate: None,
            soak: None,
            baseline: None,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load/result.json"),
            only: None,
            tls_upstream: false,
            audit: false,
            callgrind: None,
            callgrind_out: None,
            intercept: None,
            link_order: None,
            exact_c1: false,
            post: None,
            idle: None,
            svg: None,
            svg_from: None,
            scaling: false,
            bodies: false,
            h2: false,
            unix: false,
            grpc: false,
        };
        let mut sidekey = None;
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value")).clone();
            match a.as_str() {
                "--duration" => o.duration = value().parse().expect("--duration SECS"),
                "--rounds" => o.rounds = value().parse().expect("--rounds N"),
                "--rotate" => o.rotate = Some(sidekey::config::parse_duration(&value()).expect("--rotate 100ms")),
                "--out" => o.out = PathBuf::from(value()),
                "--baseline" => o.baseline = Some(PathBuf::from(value())),
                "--sidekey" => sidekey = Some(PathBuf::from(value())),
                "--soak" => o.soak = Some(value().parse().expect("--soak SECS")),
                "--only" => o.only = Some(value().split(',').map(str::to_owned).collect()),
                "--tls-upstream" => o.tls_upstream = true,
                "--c1-exact" => o.exact_c1 = true,
                "--post" => o.post = Some(value().parse().expect("--post BYTES")),
                "--idle" => o.idle = Some(o.idle.unwrap_or(10_000)),
                "--scaling" => o.scaling = true,
                "--bodies" => o.bodies = true,
                "--h2" => o.h2 = true,
                "--unix" => o.unix = true,
                "--grpc" => o.grpc = true,
                "--svg" => o.svg = Some(PathBuf::from(value())),
                "--svg-from" => o.svg_from = Some(PathBuf::from(value())),
                "--idle-connections" => o.idle = Some(value().parse().expect("--idle-connections N")),
                "--audit" => o.audit = true,
                "--callgrind" => o.callgrind = Some(value().parse().expect("--callgrind REQUESTS")),
                "--callgrind-out" => o.callgrind_out = Some(PathBuf::from(value())),
                "--link-order" => o.link_order = Some(PathBuf::from(value())),
                "--intercept" => o.intercept = Some(o.intercept.unwrap_or(3)),
                "--rounds-intercept" => o.intercept = Some(value().parse().expect("--rounds-intercept N")),
                // cargo bench passes --bench; anything else is a mistake worth saying.
                "--bench" => {}
                other => panic!("unknown option {other} (see the doc at the top of benches/load.rs)"),
            }
        }
        o.sidekey = sidekey.unwrap_or_else(|| {
            release_binary().unwrap_or_else(|e| {
                eprintln!("load: {e}");
                std::process::exit(1)
            })
        });
        o
    }
}

/// This tree's sidekey as `cargo build --release` makes it, built now if it is not up to date:
/// the binary users run. The copy `cargo bench` builds for its benches (`CARGO_BIN_EXE_sidekey`,
/// used when this program runs outside cargo) is built with the dev-dependencies' features
/// unified into crates sidekey shares with them (serde, memchr, regex-automata, ...), so its
/// generic functions get other symbol names than the release build's and miss their place in
/// the code order (`build.rs`).
fn release_binary() -> Result<PathBuf, String> {
    let Some(cargo) = std::env::var_os("CARGO") else { return Ok(PathBuf::from(SIDEKEY)) };
    let mut build = Command::new(cargo);
    // Without the variables cargo set for this bench: build scripts that read them (ring's)
    // would run again and rebuild their crate, here and in the next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CRATE_", "CARGO_PRIMARY_"]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "OUT_DIR"
        {
            build.env_remove(name.as_ref());
        }
    }
    let out = build
        .args(["build", "--release", "--bin", "sidekey", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo build --release: {e}"))?;
    if !out.status.success() {
        return Err("cargo build --release --bin sidekey failed".into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "sidekey")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo build --release named no sidekey executable".into())
}

// ---------------------------------------------------------------------------------------------
// The origin: a separate process of this same program.

/// What the origin has seen, over all its connections (plain and TLS).
#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
    /// Requests whose token was older than the newest one already seen.
    stale: AtomicU64,
    newest: AtomicU64,
    /// Token number -> first time seen, in µs since the Unix epoch.
    first_seen: Mutex<BTreeMap<u64, u64>>,
}

/// Serves `200 ok` on a free port (printed as `ORIGIN <port> <tls port>`), counting connections
/// and the `Authorization` tokens `Bearer rot-NNNNNN` it sees: `GET /__stats` answers them as
/// JSON. With `cert_out`, it also serves TLS (1.3, HTTP/1.1) on a second port, with a
/// self-signed certificate for `localhost` and `127.0.0.1` written there as PEM; else the TLS
/// port is printed as 0.
fn origin(cert_out: Option<PathBuf>, threads: usize, h2: bool) {
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build().unwrap(),
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stats = Arc::new(Stats::default());
        let mut tls_port = 0;
        if let Some(path) = cert_out {
            let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tls_port = tls_listener.local_addr().unwrap().port();
            let acceptor = origin_tls(&path, h2);
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = tls_listener.accept().await else { continue };
                    let _ = stream.set_nodelay(true);
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let (acceptor, stats) = (acceptor.clone(), stats.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve_origin_h2(tls, stats).await;
                            } else {
                                serve_origin(tls, stats).await;
                            }
                        }
                    });
                }
            });
        }
        println!("ORIGIN {} {tls_port}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            stats.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve_origin(stream, stats.clone()));
        }
    });
}

/// A TLS acceptor with a fresh self-signed certificate, written to `cert_out` for the proxies
/// to trust.
fn origin_tls(cert_out: &Path, h2: bool) -> tokio_rustls::TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    std::fs::write(cert_out, cert.cert.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// One origin connection over HTTP/2 (the `--h2` runs' TLS origin): `200 ok`, the requests
/// counted; tokens are not tracked there.
async fn serve_origin_h2<I>(io: I, stats: Arc<Stats>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let stats = stats.clone();
        async move {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let mut body = req.into_body();
            while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

/// One origin connection: HTTP/1.1, `200 ok` once the request's body is read (as an API server
/// reads the document it is sent), the token noted.
async fn serve_origin<I>(io: I, stats: Arc<Stats>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;

    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let stats = stats.clone();
        async move {
            if req.uri().path() == "/__stats" {
                let body = json!({
                    "connections": stats.connections.load(Ordering::Relaxed),
                    "requests": stats.requests.load(Ordering::Relaxed),
                    "stale": stats.stale.load(Ordering::Relaxed),
                    "first_seen_us": *stats.first_seen.lock().unwrap(),
                });
                return Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    body.to_string(),
                ))));
            }
            stats.requests.fetch_add(1, Ordering::Relaxed);
            // `GET /bytes/N`: N bytes (the large-body runs), at most 64 MiB.
            let size = req.uri().path().strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok());
            let (parts, mut body) = req.into_parts();
            while !hyper::body::Body::is_end_stream(&body) {
                match http_body_util::BodyExt::frame(&mut body).await {
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            let req = hyper::Request::from_parts(parts, ());
            let n = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer rot-"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = n {
                let newest = stats.newest.fetch_max(n, Ordering::Relaxed);
                if n < newest {
                    stats.stale.fetch_add(1, Ordering::Relaxed);
                } else if n > newest || n == 0 {
                    stats.first_seen.lock().unwrap().entry(n).or_insert_with(now_us);
                }
            }
            if let Some(n) = size {
                static BIG: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
                let big = BIG.get_or_init(|| Bytes::from(vec![b'x'; 64 << 20]));
                return Ok(hyper::Response::new(Full::new(big.slice(..n.min(big.len())))));
            }
            Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), svc).await;
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A started server and the processes whose CPU time and memory count as its own.
struct Server {
    name: &'static str,
    child: Child,
    url: String,
    /// sidekey's admin listener (`host:port`).
    admin: Option<String>,
    _dir: tempfile::TempDir,
    rotate: Rotator,
}

enum Rotator {
    File(PathBuf),
    Nginx { include: PathBuf },
    Haproxy { socket: PathBuf, map: PathBuf },
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        // Long enough for callgrind to write its profile.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The process and its descendants (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while i < pids.len() {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i])).unwrap_or_default();
            pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            i += 1;
        }
        pids
    }

    /// CPU time of all its processes, in µs: (user + kernel, kernel).
    fn cpu_us(&self) -> (u64, u64) {
        let tick = 1_000_000 / clock_ticks();
        self.pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .map(|s| {
                // Fields after the command name (which may hold spaces) start after ") ".
                let rest = &s[s.rfind(')').unwrap() + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let (user, kernel) = (f[11].parse::<u64>().unwrap(), f[12].parse::<u64>().unwrap());
                ((user + kernel) * tick, kernel * tick)
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// A `/proc/PID/status` memory field (`VmHWM:`, `VmRSS:`) summed over its processes, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        self.pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .sum()
    }

    /// Peak RSS of all its processes, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Puts token number `n` in place the way this proxy takes a new token.
    fn set_token(&self, n: u64) -> Result<(), String> {
        let token = format!("rot-{n:06}");
        match &self.rotate {
            Rotator::File(path) => {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, &token).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, path).map_err(|e| e.to_string())
            }
            Rotator::Nginx { include } => {
                std::fs::write(include, nginx_include(&token)).map_err(|e| e.to_string())?;
                let ok = Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status();
                ok.map_err(|e| e.to_string()).and_then(|s| if s.success() { Ok(()) } else { Err("kill -HUP".into()) })
            }
            Rotator::Haproxy { socket, map } => {
                use std::io::Read;
                let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
                writeln!(s, "set map {} t {token}", map.display()).map_err(|e| e.to_string())?;
                let mut answer = String::new();
                s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
                if answer.trim().is_empty() {
                    Ok(())
                } else {
                    Err(format!("haproxy: {}", answer.trim()))
                }
            }
        }
    }
}

fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// While set, [`pinned`] puts every process it starts on these CPUs (`taskset -c` list)
/// instead of the one it names: the scaling runs share the machine's CPUs between all.
static CPU_LIST: Mutex<Option<&'static str>> = Mutex::new(None);

/// `taskset -c CPU` in front of a command when the machine has a CPU to spare for it.
fn pinned(cpu: usize, program: &str) -> Command {
    if cpus() >= 2 && which("taskset") {
        let list = *CPU_LIST.lock().unwrap();
        let mut c = Command::new("taskset");
        c.arg("-c").arg(list.map_or(cpu.to_string(), str::to_owned)).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Moves every thread of `pids` to `cpu` (`taskset -a -p`), where [`pinned`] would pin.
fn move_to(pids: &[u32], cpu: usize) -> Result<(), String> {
    if cpus() < 2 || !which("taskset") {
        return Ok(());
    }
    for pid in pids {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("taskset: {e}"))?;
        if !status.success() {
            return Err(format!("taskset -a -p -c {cpu} {pid} failed"));
        }
    }
    Ok(())
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Drops `program`'s executable file from the page cache before it starts (`sync FILE`, then
/// `dd iflag=nocache count=0`: `posix_fadvise(DONTNEED)` over the whole file), so every binary's
/// text is read in the same way as it runs. How much of a binary is resident at start otherwise
/// moves by up to 0.8 MiB with how its file sits in the cache (large folios as it was just
/// written or copied, pages read in before), more than two builds differ by. Best effort: a
/// binary that cannot be found or dropped starts as it is.
fn drop_from_page_cache(program: &str) {
    let path = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
    };
    let Some(path) = path else { return };
    let quiet = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if quiet(Command::new("sync").arg(&path)) {
        let mut input = std::ffi::OsString::from("if=");
        input.push(&path);
        quiet(Command::new("dd").arg(input).args(["iflag=nocache", "count=0", "status=none"]));
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `addr` accepts connections.
fn wait_listening(addr: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} is not listening on {addr} after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Where the proxies send their requests.
struct Origin {
    child: Child,
    /// Plain HTTP; also where the direct runs go and where its stats are read.
    plain: SocketAddr,
    /// With `--tls-upstream`: the TLS port and the certificate to trust for it.
    tls: Option<(u16, PathBuf)>,
    /// Its TLS port offers HTTP/2 (ALPN `h2`) as well.
    h2: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Origin {
    /// `(upstream URL, CA file)` for a proxy.
    fn upstream(&self) -> (String, Option<&Path>) {
        match &self.tls {
            Some((port, cert)) => (format!("https://127.0.0.1:{port}"), Some(cert.as_path())),
            None => (format!("http://{}", self.plain), None),
        }
    }
}

fn start_origin(tls: bool) -> Result<Origin, String> {
    start_origin_with(tls, 1)
}

/// The origin, on `threads` threads (one: a current-thread runtime).
fn start_origin_with(tls: bool, threads: usize) -> Result<Origin, String> {
    start_origin_full(tls, threads, false)
}

/// The origin on `threads` threads, its TLS port offering HTTP/2 too with `h2`.
fn start_origin_full(tls: bool, threads: usize, h2: bool) -> Result<Origin, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cert = dir.path().join("origin.pem");
    let mut command = pinned(0, exe.to_str().unwrap());
    command.arg("--origin").arg("--origin-threads").arg(threads.to_string());
    if h2 {
        command.arg("--origin-h2");
    }
    if tls {
        command.arg("--cert-out").arg(&cert);
    }
    let mut child = command.stdout(Stdio::piped()).spawn().map_err(|e| format!("origin: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).map_err(|e| e.to_string())?;
    let ports: Vec<u16> = line.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect();
    let [port, tls_port] = ports[..] else { return Err(format!("origin did not start: {line:?}")) };
    Ok(Origin {
        child,
        plain: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: tls.then_some((tls_port, cert)),
        h2,
        _dir: dir,
    })
}

fn origin_stats(origin: SocketAddr) -> Value {
    let text = http_get(&origin.to_string(), "/__stats").unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

/// How a sidekey under test runs.
#[derive(Clone, Copy, Default)]
struct Run<'a> {
    audit: bool,
    /// Under callgrind, writing its profile here, with the 401-retry window after a token
    /// change off (every request takes the steady path), or lasting the whole run (`fresh`).
    callgrind: Option<&'a Path>,
    fresh: bool,
    /// Under callgrind, functions named as the linker knows them (`--demangle=no`).
    mangled: bool,
    /// With `[intercept]` (a generated CA written to `intercept-ca.crt` in its directory), the
    /// route naming host `origin.test`.
    intercept: bool,
    /// `[listen] workers`.
    workers: Option<usize>,
    /// The proxy listens on a Unix socket (`listen.proxy = "unix:PATH"`) instead of TCP.
    unix: bool,
}

fn start_sidekey(origin: &Origin, name: &'static str, bin: &Path, run: Run) -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let token = dir.path().join("token");
    std::fs::write(&token, "rot-000000").unwrap();
    let config = dir.path().join("sidekey.toml");
    let (upstream, ca) = origin.upstream();
    let listen =
        if run.unix { format!("unix:{}", dir.path().join("proxy.sock").display()) } else { "127.0.0.1:0".into() };
    let mut text = format!(
        "[listen]\nproxy = {listen:?}\nadmin = \"127.0.0.1:0\"\n{workers}\n[[routes]]\nname = \"load\"\nprefix = \"/\"\n\
         upstream = \"{upstream}\"\ntoken = \"load\"\n",
        workers = run.workers.map_or(String::new(), |n| format!("workers = {n}\n"))
    );
    if run.intercept {
        text.push_str("host = \"origin.test\"\n");
    }
    if let Some(ca) = ca {
        text.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
    }
    text.push_str(&format!("\n[tokens.load]\nsource = \"file\"\npath = {:?}\n", token.display().to_string()));
    if run.callgrind.is_some() {
        text.push_str(if run.fresh { "overlap = \"1h\"\n" } else { "overlap = \"0s\"\n" });
    }
    let max_connections = idle::conn_limit(1024);
    if max_connections > 1024 {
        text.push_str(&format!("\n[limits]\nmax_connections = {max_connections}\n"));
    }
    if run.audit {
        text.push_str(&format!("\n[audit]\npath = {:?}\n", dir.path().join("audit.log").display().to_string()));
    }
    if run.intercept {
        let out = dir.path().join("intercept-ca.crt");
        text.push_str(&format!("\n[intercept]\ngenerate = true\nca_cert_out = {:?}\n", out.display().to_string()));
    }
    std::fs::write(&config, text).unwrap();
    let mut command = match run.callgrind {
        Some(out) => {
            let mut c = pinned(1, "valgrind");
            c.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}", out.display()));
            if run.mangled {
                c.arg("--demangle=no");
            }
            c.arg(bin);
            c
        }
        None => {
            drop_from_page_cache(bin.to_str().unwrap());
            pinned(1, bin.to_str().unwrap())
        }
    };
    let mut child = command
        .args(["run", "--log-format", "json", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn,sidekey::serve=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sidekey: {e}"))?;
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let (proxy, admin) = loop {
        let line = lines.next().ok_or("sidekey exited before listening")?.map_err(|e| e.to_string())?;
        if line.contains("sidekey listening") {
            let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            break (v["proxy"].as_str().unwrap().to_owned(), v["admin"].as_str().map(str::to_owned));
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    // A Unix socket's URL is the harness's own `unix:PATH` (its clients send `GET /x` there).
    let url = if proxy.starts_with("unix:") { proxy } else { format!("http://{proxy}/x") };
    Ok(Server { name, child, url, admin, _dir: dir, rotate: Rotator::File(token) })
}

fn nginx_include(token: &str) -> String {
    format!("proxy_set_header Authorization \"Bearer {token}\";\n")
}

/// How an nginx under test runs, beside what every run sets.
#[derive(Clone, Copy)]
struct NginxOpts {
    workers: usize,
    /// `proxy_buffering` and `proxy_request_buffering` both on or off, and any body size
    /// (`client_max_body_size 0`); `None`: nginx's defaults.
    buffering: Option<bool>,
    /// Its listener speaks HTTP/2 with prior knowledge (h2c) only.
    h2c: bool,
    /// `grpc_pass` to the origin's TLS port (HTTP/2 upstream) instead of `proxy_pass`.
    grpc: bool,
    /// It listens on a Unix socket (`listen unix:PATH;`) instead of TCP.
    unix: bool,
}

impl Default for NginxOpts {
    fn default() -> Self {
        NginxOpts { workers: 1, buffering: None, h2c: false, grpc: false, unix: false }
    }
}

fn start_nginx(origin: &Origin) -> Result<Server, String> {
    start_nginx_with(origin, NginxOpts::default())
}

fn start_nginx_with(origin: &Origin, opts: NginxOpts) -> Result<Server, String> {
    if !which("nginx") {
        return Err("nginx is not installed (benches/load/setup.sh)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let include = dir.path().join("token.conf");
    std::fs::write(&include, nginx_include("rot-000000")).unwrap();
    let conf = dir.path().join("nginx.conf");
    // A posted body larger than nginx's default body buffer (16 KiB) would go to a temporary
    // file first (and took 44 ms a request at 64 KiB here): the buffer is made to hold it, as
    // one would configure nginx for such bodies.
    let mut body_buffer = std::env::var(POST_VAR)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 16 * 1024)
        .map_or(String::new(), |n| format!("  client_body_buffer_size {}k;\n", n.div_ceil(1024)));
    if let Some(on) = opts.buffering {
        let on = if on { "on" } else { "off" };
        body_buffer.push_str(&format!(
            "  client_max_body_size 0;\n  proxy_buffering {on};\n  proxy_request_buffering {on};\n"
        ));
    }
    let (server, pass, tls) = match &origin.tls {
        Some((port, ca)) => (
            format!("127.0.0.1:{port}"),
            "https",
            format!(
                "      proxy_ssl_trusted_certificate {};\n      proxy_ssl_verify on;\n      proxy_ssl_name localhost;\n\
                 proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n      proxy_ssl_protocols TLSv1.3;\n",
                ca.display()
            ),
        ),
        None => (origin.plain.to_string(), "http", String::new()),
    };
    let mut location = format!(
        "      proxy_pass {pass}://origin;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
         include {inc};\n{tls}",
        inc = include.display()
    );
    if opts.grpc {
        // nginx's one HTTP/2 upstream: its gRPC proxy, which carries any HTTP/2 request.
        let Some((_, ca)) = &origin.tls else { return Err("grpc_pass needs the TLS origin".into()) };
        location = format!(
            "      grpc_pass grpcs://origin;\n      grpc_ssl_trusted_certificate {};\n      grpc_ssl_verify on;\n\
             grpc_ssl_name localhost;\n      grpc_ssl_server_name on;\n      grpc_ssl_protocols TLSv1.3;\n\
             grpc_set_header Authorization \"Bearer rot-000000\";\n",
            ca.display()
        );
    }
    // An h2c client's connection would get a GOAWAY after nginx's default 1000 requests, its
    // streams then in flight failing at the client.
    let socket = dir.path().join("nginx.sock");
    let address = if opts.unix { format!("unix:{}", socket.display()) } else { format!("127.0.0.1:{port}") };
    let listen = if opts.h2c { format!("{address} http2;\n    keepalive_requests 1000000") } else { address };
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections {wc}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n{body_buffer}  proxy_temp_path {p}/proxy;\n\
             upstream origin {{ server {server}; keepalive 128; }}\n\
             server {{\n    listen {listen};\n    location / {{\n{location}    }}\n  }}\n}}\n",
            p = dir.path().display(),
            wc = idle::conn_limit(4096),
            workers = opts.workers,
        ),
    )
    .unwrap();
    let prefix = dir.path().to_owned();
    let args = ["-p".as_ref(), prefix.as_os_str(), "-c".as_ref(), conf.as_os_str()];
    let at = if opts.unix { Listening::Unix(socket) } else { Listening::Tcp(port) };
    spawn_peer("nginx", &args, at, dir, Rotator::Nginx { include })
}

/// Where a peer proxy listens.
enum Listening {
    Tcp(u16),
    /// A Unix socket: its [`Server::url`] is `unix:PATH`.
    Unix(PathBuf),
}

/// Starts a peer proxy (pinned, output discarded) and waits until it accepts where it listens.
fn spawn_peer(
    name: &'static str,
    args: &[&std::ffi::OsStr],
    at: Listening,
    dir: tempfile::TempDir,
    rotate: Rotator,
) -> Result<Server, String> {
    drop_from_page_cache(name);
    let child = pinned(1, name)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let url = match &at {
        Listening::Tcp(port) => format!("http://127.0.0.1:{port}/x"),
        Listening::Unix(path) => format!("unix:{}", path.display()),
    };
    let server = Server { name, child, url, admin: None, _dir: dir, rotate };
    match at {
        Listening::Tcp(port) => wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), name)?,
        Listening::Unix(path) => unix::wait_unix(&path, name)?,
    }
    Ok(server)
}

fn start_haproxy(origin: &Origin) -> Result<Server, String> {
    start_haproxy_with(origin, false)
}

/// HAProxy; with `h2c`, its listener takes HTTP/2 with prior knowledge (`proto h2`). To an
/// origin offering HTTP/2 it speaks HTTP/2 (`alpn h2`).
fn start_haproxy_with(origin: &Origin, h2c: bool) -> Result<Server, String> {
    if !which("haproxy") {
        return Err("haproxy is not installed (benches/load/setup.sh)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let map = dir.path().join("token.map");
    std::fs::write(&map, "t rot-000000\n").unwrap();
    let socket = dir.path().join("admin.sock");
    let conf = dir.path().join("haproxy.cfg");
    let server = match &origin.tls {
        Some((port, ca)) => {
            format!(
                "127.0.0.1:{port} ssl verify required ca-file {} sni str(localhost) ssl-min-ver TLSv1.3{}",
                ca.display(),
                if origin.h2 { " alpn h2" } else { "" }
            )
        }
        None => origin.plain.to_string(),
    };
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  stats socket {sock} level admin\n{maxconn}\n\
             defaults\n  mode http\n{maxconn}  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\n\
             frontend fe\n  bind 127.0.0.1:{port}{proto}\n  http-request set-header Authorization \"Bearer %[str(t),map({map})]\"\n\
             default_backend be\n\nbackend be\n  server origin {server}\n",
            sock = socket.display(),
            map = map.display(),
            proto = if h2c { " proto h2" } else { "" },
            maxconn = match idle::conn_limit(0) {
                0 => String::new(),
                n => format!("  maxconn {n}\n"),
            },
        ),
    )
    .unwrap();
    let args = ["-db".as_ref(), "-f".as_ref(), conf.as_os_str()];
    spawn_peer("haproxy", &args, Listening::Tcp(port), dir, Rotator::Haproxy { socket, map })
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// One wrk run's figures.
#[derive(Debug, Clone)]
struct Wrk {
    requests: u64,
    duration_s: f64,
    errors: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    /// The mean, in hundredths of a µs (the percentiles are whole µs).
    mean: f64,
}

/// The JSON after `prefix` on a line of what `who` printed.
fn json_line(out: &std::process::Output, prefix: &str, who: &str) -> Result<Value, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .ok_or_else(|| format!("{who} printed no result: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    serde_json::from_str(line).map_err(|e| e.to_string())
}

fn wrk(url: &str, connections: usize, secs: u64) -> Result<Wrk, String> {
    wrk_with(url, 1, connections, secs, None)
}

/// wrk with `threads` threads, and with `post` a `POST` of a body that long (else as `--post`
/// says). A large body's request may take longer than wrk's 2 s before it counts as an
/// error: with `post` or a `/bytes/` URL it gets 60 s.
fn wrk_with(url: &str, threads: usize, connections: usize, secs: u64, post: Option<usize>) -> Result<Wrk, String> {
    let mut command = pinned(0, "wrk");
    if let Some(bytes) = post {
        command.env(POST_VAR, bytes.to_string());
    }
    if post.is_some() || url.contains("/bytes/") {
        command.args(["--timeout", "60s"]);
    }
    let out = command
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
            WRK_SCRIPT,
            url,
        ])
        .output()
        .map_err(|e| format!("wrk: {e} (benches/load/setup.sh installs it)"))?;
    let v = json_line(&out, "WRK_JSON ", "wrk")?;
    let e = &v["errors"];
    let errors = ["connect", "read", "write", "status", "timeout"].iter().map(|k| e[k].as_u64().unwrap()).sum();
    let f = |k: &str| v[k].as_f64().unwrap();
    Ok(Wrk {
        requests: v["requests"].as_u64().unwrap(),
        duration_s: f("duration_us") / 1e6,
        errors,
        p50: f("p50"),
        p90: f("p90"),
        p99: f("p99"),
        p999: f("p999"),
        mean: f("mean"),
    })
}

/// One target's figures in one round.
#[derive(Debug, Clone)]
struct Sample {
    latency: Wrk,
    /// Concurrency 1 timed to the ns by this program's own client (`--c1-exact`).
    exact: Option<Exact>,
    rps: f64,
    cpu_us_per_request: Option<f64>,
    /// The part of it spent in the kernel.
    kernel_us_per_request: Option<f64>,
    peak_rss_kib: Option<u64>,
    errors: u64,
}

fn measure(url: &str, server: Option<&Server>, secs: u64, exact: bool) -> Result<Sample, String> {
    // A short warm-up fills pools and caches.
    wrk(url, 64, 1)?;
    // Latency beside the load generator, throughput on the proxy's own CPU.
    let pids = server.map(Server::pids).unwrap_or_default();
    move_to(&pids, 0)?;
    let latency = wrk(url, 1, secs);
    let exact = if exact && latency.is_ok() { Some(exact_c1(url, secs)) } else { None };
    move_to(&pids, 1)?;
    let latency = latency?;
    let exact = exact.transpose()?;
    let cpu_before = server.map(Server::cpu_us);
    let load = wrk(url, 64, secs)?;
    let cpu = server.zip(cpu_before).map(|(s, before)| {
        let (after, n) = (s.cpu_us(), load.requests.max(1) as f64);
        ((after.0 - before.0) as f64 / n, (after.1 - before.1) as f64 / n)
    });
    Ok(Sample {
        rps: load.requests as f64 / load.duration_s,
        cpu_us_per_request: cpu.map(|c| c.0),
        kernel_us_per_request: cpu.map(|c| c.1),
        peak_rss_kib: server.map(Server::peak_rss_kib),
        errors: latency.errors + load.errors,
        latency,
        exact,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run(opts: &Opts) -> Result<(), String> {
    if let Some(path) = &opts.link_order {
        return write_link_order(&opts.sidekey, path);
    }
    if let Some(json) = &opts.svg_from {
        let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
        return write_svg(opts, &doc);
    }
    if (opts.rounds > 0 || opts.rotate.is_some() || opts.soak.is_some()) && !which("wrk") {
        return Err("wrk is not installed: run benches/load/setup.sh".into());
    }
    let origin_server = start_origin(opts.tls_upstream)?;
    let origin = origin_server.plain;
    let result = (|| {
        let wanted = |name: &str| opts.only.as_ref().is_none_or(|o| o.iter().any(|w| w == name));
        let mut servers: Vec<Server> = Vec::new();
        let mut missing = Vec::new();
        if wanted("sidekey") {
            servers.push(start_sidekey(
                &origin_server,
                "sidekey",
                &opts.sidekey,
                Run { audit: opts.audit, ..Run::default() },
            )?);
        }
        if let Some(bin) = &opts.baseline {
            servers.push(start_sidekey(&origin_server, "baseline", bin, Run { audit: opts.audit, ..Run::default() })?);
        }
        for (name, start) in
            [("nginx", start_nginx as fn(&Origin) -> Result<Server, String>), ("haproxy", start_haproxy)]
        {
            if wanted(name) {
                match start(&origin_server) {
                    Ok(s) => servers.push(s),
                    Err(e) => missing.push(format!("{name}: {e}")),
                }
            }
        }
        for m in &missing {
            eprintln!("load: skipping {m}");
        }
        let direct_url = format!("http://{origin}/x");
        let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        for round in 1..=opts.rounds {
            eprintln!("load: round {round} of {}", opts.rounds);
            // Alternate the order from round to round.
            let mut order: Vec<Option<&Server>> = std::iter::once(None).chain(servers.iter().map(Some)).collect();
            let shift = (round - 1) % order.len();
            order.rotate_left(shift);
            for target in order {
                let (name, url) = target.map_or(("direct", direct_url.as_str()), |s| (s.name, s.url.as_str()));
                let s = measure(url, target, opts.duration, opts.exact_c1)?;
                eprintln!(
                    "load:   {name:8} c1 p50 {:.0} µs p99 {:.0} µs mean {:.2} µs | c64 {:.0} req/s, {} µs CPU/req{}",
                    s.latency.p50,
                    s.latency.p99,
                    s.latency.mean,
                    s.rps,
                    s.cpu_us_per_request.map_or("-".into(), |c| format!("{c:.1}")),
                    s.exact
                        .as_ref()
                        .map_or(String::new(), |e| format!(" | exact c1 p50 {:.2} µs mean {:.2} µs", e.p50, e.mean))
                );
                samples.entry(name).or_default().push(s);
            }
        }
        let rotation = match opts.rotate {
            Some(every) => Some(rotation_runs(&servers, origin, every, opts.duration)?),
            None => None,
        };
        let soak = match opts.soak {
            Some(secs) => Some(servers.iter().map(|s| soak_run(s, secs)).collect::<Result<Vec<_>, _>>()?),
            None => None,
        };
        drop(servers);
        let idle = match opts.idle {
            Some(n) => Some(idle::idle_runs(opts, &origin_server, n, opts.rounds.max(1), &wanted)?),
            None => None,
        };
        let callgrind = match opts.callgrind {
            Some(n) => Some(callgrind_runs(opts, &origin_server, n)?),
            None => None,
        };
        let scaling = if opts.scaling { Some(scaling::scaling_runs(opts, &wanted)?) } else { None };
        let bodies = if opts.bodies { Some(bodies::body_runs(opts, &origin_server, &wanted)?) } else { None };
        let h2 = if opts.h2 { Some(h2::h2_runs(opts, &wanted)?) } else { None };
        let unix = if opts.unix { Some(unix::unix_runs(opts, &origin_server, &wanted)?) } else { None };
        let grpc = if opts.grpc { Some(grpc::grpc_runs(opts, &wanted)?) } else { None };
        Ok::<_, String>((samples, missing, rotation, soak, callgrind, Later { idle, scaling, bodies, h2, unix, grpc }))
    })();
    drop(origin_server);
    let (samples, missing, rotation, soak, callgrind, later) = result?;
    let Later { idle, scaling, bodies, h2, unix, grpc } = later;
    let intercept = match opts.intercept {
        Some(rounds) => Some(intercept_runs(&opts.sidekey, rounds, opts.duration)?),
        None => None,
    };
    let extra = Extra { rotation, soak, callgrind, intercept, idle, scaling, bodies, h2, unix, grpc };
    report(opts, &samples, &missing, extra)
}

/// Instructions per request in sidekey's own process, counted by callgrind (stable where
/// timings are not): the total of a run with `n` requests less that of a run with none, over
/// `n`. Both runs start sidekey under callgrind and send 50 warm-up requests; the measured ones
/// go one at a time over one keep-alive connection.
fn callgrind_runs(opts: &Opts, origin: &Origin, n: u64) -> Result<Vec<Value>, String> {
    if !which("valgrind") {
        return Err("valgrind is not installed: run benches/load/setup.sh".into());
    }
    let mut bins = vec![("sidekey", opts.sidekey.clone())];
    bins.extend(opts.baseline.clone().map(|b| ("baseline", b)));
    let mut out = Vec::new();
    for ((name, bin), fresh) in bins.iter().flat_map(|b| [(b, false), (b, true)]) {
        let path = if fresh { "in a rotation's retry window" } else { "steady" };
        // (all instructions, those in memset/memcpy/memmove)
        let total = |requests: u64| -> Result<(u64, u64), String> {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let profile = dir.path().join("callgrind.out");
            let server = start_sidekey(origin, name, bin, Run { callgrind: Some(&profile), fresh, ..Run::default() })?;
            eprintln!("load: callgrind, {name}, {path}, {requests} requests");
            keep_alive_requests(&server.url, 50)?;
            keep_alive_requests(&server.url, requests)?;
            drop(server);
            if let Some(keep) = &opts.callgrind_out {
                std::fs::create_dir_all(keep).map_err(|e| format!("{}: {e}", keep.display()))?;
                let to = keep.join(format!("{name}-{}{requests}.out", if fresh { "fresh-" } else { "" }));
                std::fs::copy(&profile, &to).map_err(|e| format!("{}: {e}", to.display()))?;
            }
            callgrind_totals(&profile)
        };
        let (idle, loaded) = (total(0)?, total(n)?);
        out.push(json!({
            "target": name,
            "path": path,
            "requests": n,
            "instructions_per_request": loaded.0.saturating_sub(idle.0) as f64 / n as f64,
            "of_which_mem_fill_copy": loaded.1.saturating_sub(idle.1) as f64 / n as f64,
        }));
    }
    Ok(out)
}

/// Writes the order the release binary's code is linked in (`build.rs`): the functions sidekey
/// runs per request first, most instructions first, then those it runs at start-up, for an
/// admin scrape and at shutdown. Each of three paths (plain upstream, within a rotation's retry
/// window, TLS upstream) runs under callgrind twice, with no request and with `REQUESTS` keep-
/// alive requests; a function counts as per request where the second run called it at least
/// once per two requests more often than the first.
fn write_link_order(bin: &Path, path: &Path) -> Result<(), String> {
    const REQUESTS: u64 = 2000;
    if !which("valgrind") {
        return Err("valgrind is not installed: run benches/load/setup.sh".into());
    }
    let (plain, tls) = (start_origin(false)?, start_origin(true)?);
    let exe = bin.file_name().and_then(|n| n.to_str()).ok_or("the binary has no file name")?;
    let (mut per_request, mut rest) = (BTreeMap::<String, u64>::new(), BTreeMap::<String, u64>::new());
    for (origin, fresh) in [(&plain, false), (&plain, true), (&tls, false)] {
        let mut runs = Vec::new();
        for requests in [0, REQUESTS] {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let profile = dir.path().join("callgrind.out");
            let run = Run { callgrind: Some(&profile), fresh, mangled: true, ..Run::default() };
            let server = start_sidekey(origin, "sidekey", bin, run)?;
            eprintln!("load: link order, tls {}, retry window {fresh}, {requests} requests", origin.tls.is_some());
            keep_alive_requests(&server.url, requests)?;
            if let Some(admin) = &server.admin {
                http_get(admin, "/metrics")?;
            }
            drop(server);
            runs.push(function_costs(&profile, exe)?);
        }
        let (idle, loaded) = (&runs[0], &runs[1]);
        for (name, &(cost, calls)) in loaded {
            let before = idle.get(name).map_or(0, |c| c.1);
            if calls.saturating_sub(before) >= REQUESTS / 2 {
                *per_request.entry(name.clone()).or_default() += cost;
            }
        }
        for (name, &(cost, _)) in loaded.iter().chain(idle) {
            *rest.entry(name.clone()).or_default() += cost;
        }
    }
    let by_cost = |m: &BTreeMap<String, u64>| {
        let mut v: Vec<(&String, &u64)> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.into_iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    };
    let first = by_cost(&per_request);
    let then: Vec<String> = by_cost(&rest).into_iter().filter(|n| !per_request.contains_key(n)).collect();
    let mut text = format!(
        "# The order sidekey's release binary is linked in (build.rs): {} functions run per request,\n\
         # then {} run at start-up, for an admin scrape or at shutdown. Written by\n\
         # `cargo bench --bench load -- --link-order proxy/link-order.txt`; names the binary no\n\
         # longer has are skipped, so write it again after a dependency or feature change.\n",
        first.len(),
        then.len()
    );
    for name in first.iter().chain(&then) {
        text.push_str(name);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("load: link order written to {}: {} per request, {} more", path.display(), first.len(), then.len());
    Ok(())
}

/// `GET path` on `authority` (HTTP/1.1, `Connection: close`); the answer must be a 200.
fn http_get(authority: &str, path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(authority).map_err(|e| format!("{authority}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", text.lines().next().unwrap_or("no answer")));
    }
    Ok(text)
}

/// Per function of object `exe`, by the name the linker knows: the instructions spent in it
/// (its own, not its callees') and the calls into it, from a callgrind profile written with
/// `--demangle=no`. The format: `ob=`/`fn=` lines name the object and function the cost lines
/// after them belong to (`(id) name` the first time, `(id)` after); a call is `cob=` (when the
/// callee is in another object), `cfn=`, then `calls=COUNT ...` and a line with the call's
/// cost, which is the callee's and is skipped.
fn function_costs(profile: &Path, exe: &str) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let text = std::fs::read_to_string(profile).map_err(|e| format!("{}: {e}", profile.display()))?;
    let ours = |object: &str| object.ends_with(&format!("/{exe}")) || object == exe;
    let (mut objects, mut functions) = (BTreeMap::<String, String>::new(), BTreeMap::<String, String>::new());
    let mut out = BTreeMap::<String, (u64, u64)>::new();
    let (mut object, mut function, mut callee_object, mut callee) = (false, String::new(), None::<bool>, String::new());
    let mut skip = false;
    for line in text.lines() {
        if std::mem::take(&mut skip) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("calls=") {
            let count: u64 = rest.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(0);
            if callee_object.take().unwrap_or(object) && !callee.is_empty() {
                out.entry(callee.clone()).or_default().1 += count;
            }
            skip = true;
            continue;
        }
        if let Some((key, rest)) = line.split_once('=') {
            let table = match key {
                "ob" | "cob" => &mut objects,
                "fn" | "cfn" => &mut functions,
                _ => continue,
            };
            let name = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
                Some((id, name)) if !name.trim().is_empty() => {
                    table.insert(id.to_owned(), name.trim().to_owned());
                    name.trim().to_owned()
                }
                Some((id, _)) => table.get(id).cloned().unwrap_or_default(),
                None => rest.trim().to_owned(),
            };
            // A recursion's inner frames are named `f'2`.
            let name = name.split('\'').next().unwrap_or_default().to_owned();
            match key {
                "ob" => object = ours(&name),
                "cob" => callee_object = Some(ours(&name)),
                "fn" => function = name,
                _ => callee = name,
            }
            continue;
        }
        if !object || function.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        if let (Some(_position), Some(Ok(cost))) = (fields.next(), fields.next().map(str::parse::<u64>)) {
            out.entry(function.clone()).or_default().0 += cost;
        }
    }
    Ok(out)
}

/// A callgrind profile's instruction total, and the part spent in memset, memcpy and memmove
/// (from `callgrind_annotate`). That part is counted apart because callgrind counts each byte a
/// `rep stos`/`rep movs` fills or copies as one instruction: zeroing 8 KiB reads as 8192
/// instructions though it takes a few hundred cycles.
fn callgrind_totals(profile: &Path) -> Result<(u64, u64), String> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100"])
        .arg(profile)
        .output()
        .map_err(|e| format!("callgrind_annotate: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut total, mut mem) = (None, 0);
    for line in text.lines() {
        let Some((count, rest)) = line.trim_start().split_once(' ') else { continue };
        let Ok(count) = count.replace(',', "").parse::<u64>() else { continue };
        if rest.contains("PROGRAM TOTALS") {
            total = Some(count);
        } else if ["memset", "memcpy", "memmove"].iter().any(|f| rest.contains(f)) {
            mem += count;
        }
    }
    Ok((total.ok_or("no totals in the callgrind profile")?, mem))
}

/// Sends `n` GETs to `url` one after another on one connection; each must get a 200.
/// Concurrency 1 timed to the ns (`--c1-exact`; µs, to a hundredth): wrk keeps whole µs, and
/// proxies a µs apart need finer figures than that.
#[derive(Debug, Clone, Copy)]
struct Exact {
    p10: f64,
    p25: f64,
    p50: f64,
    p75: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

/// Runs this program's own client (`--c1-client`) beside the load generator's CPU for `secs`.
fn exact_c1(url: &str, secs: u64) -> Result<Exact, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = pinned(0, &me.to_string_lossy())
        .args(["--c1-client", url, &secs.to_string()])
        .output()
        .map_err(|e| format!("c1 client: {e}"))?;
    let v = json_line(&out, "C1_JSON ", "the c1 client")?;
    let f = |k: &str| v[k].as_f64().ok_or_else(|| format!("c1 client: no {k} in {v}"));
    Ok(Exact {
        p10: f("p10")?,
        p25: f("p25")?,
        p50: f("p50")?,
        p75: f("p75")?,
        p90: f("p90")?,
        p99: f("p99")?,
        mean: f("mean")?,
    })
}

/// The `--c1-client` mode: `GET` requests one at a time on a keep-alive connection to
/// `http://HOST:PORT/PATH` or to a Unix socket as `unix:SOCKET` (opened again when the server
/// closes it between answers, as nginx does after `keepalive_requests`), each timed from its
/// write to the last byte of its answer, for `secs` (the first 200 ms not counted). Returns the
/// JSON line the harness reads.
fn c1_client(url: &str, secs: f64) -> Result<String, String> {
    let (target, authority, path) = unix::parse(url)?;
    let connect = || unix::connect(&target);
    let request = load_request(&authority, &path);
    let (start, mut reconnects) = (Instant::now(), 0u64);
    let (warm, end) = (start + Duration::from_millis(200), start + Duration::from_secs_f64(secs));
    let mut lat: Vec<u64> = Vec::with_capacity(4_000_000);
    let (mut s, mut buf) = (connect()?, vec![0u8; 65536]);
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        use std::io::Read;
        if s.write_all(request.as_bytes()).is_err() {
            (s, reconnects) = (connect()?, reconnects + 1);
            continue;
        }
        let (mut got, mut need) = (0, None);
        loop {
            let n = s.read(&mut buf[got..]).unwrap_or(0);
            if n == 0 && got == 0 {
                // Closed between answers: again on a new connection, not counted.
                (s, reconnects) = (connect()?, reconnects + 1);
                break;
            }
            if n == 0 || got + n == buf.len() {
                return Err("the connection ended within an answer, or the answer is over 64 KiB".into());
            }
            got += n;
            if need.is_none() {
                if let Some(head) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                    need = Some(head + 4 + unix::content_length(&buf[..head])?);
                }
            }
            if need.is_some_and(|n| got >= n) {
                if t0 >= warm {
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                break;
            }
        }
    }
    if lat.is_empty() {
        return Err("no request was timed".into());
    }
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1e3;
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e3;
    Ok(json!({
        "requests": lat.len(), "reconnects": reconnects,
        "p10": at(0.10), "p25": at(0.25), "p50": at(0.50), "p75": at(0.75), "p90": at(0.90), "p99": at(0.99), "mean": mean,
    })
    .to_string())
}

fn keep_alive_requests(url: &str, n: u64) -> Result<(), String> {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = load_request(authority, path);
    let mut buf = Vec::new();
    for _ in 0..n {
        exchange(&mut s, request.as_bytes(), &mut buf)?;
    }
    Ok(())
}

/// Sends one HTTP/1.1 request on a keep-alive stream and reads its answer, which must be a 200
/// with a Content-Length body. `buf` carries bytes read past it to the next call.
fn exchange<S: std::io::Read + Write>(s: &mut S, request: &[u8], buf: &mut Vec<u8>) -> Result<(), String> {
    s.write_all(request).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                if !head.starts_with("http/1.1 200") {
                    return Err(format!("unexpected answer: {}", head.lines().next().unwrap_or("")));
                }
                buf.drain(..end + 4 + length);
                return Ok(());
            }
        }
        let mut chunk = [0u8; 4096];
        let got = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPS interception.

/// A client TLS configuration trusting only the certificates in `pem_file`.
fn client_tls(pem_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(pem_file).map_err(|e| e.to_string())? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection: to `addr` itself, or through a CONNECT tunnel to `target` on the proxy at
/// `addr`; the handshake completed.
fn tls_connect(
    addr: SocketAddr,
    tunnel_to: Option<&str>,
    name: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsClient, String> {
    use std::io::Read;
    let mut tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    if let Some(target) = tunnel_to {
        tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).map_err(|e| e.to_string())? == 0 {
                return Err("the proxy closed the CONNECT".into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)));
        }
    }
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config.clone(), server_name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(stream)
}

/// Latency percentiles (µs) of one keep-alive connection sending requests one at a time for
/// `secs`, and how many it sent.
fn sequential<S: std::io::Read + Write>(s: &mut S, request: &[u8], secs: u64) -> Result<(Vec<f64>, u64), String> {
    let mut buf = Vec::new();
    for _ in 0..200 {
        exchange(s, request, &mut buf)?;
    }
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let t = Instant::now();
        exchange(s, request, &mut buf)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let n = times.len() as u64;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    Ok((vec![pct(0.5), pct(0.99)], n))
}

/// The interception runs (see the module doc): per round and target, p50/p99 at concurrency 1
/// and sidekey's CPU per request; then the cost of new connections.
fn intercept_runs(sidekey: &Path, rounds: usize, secs: u64) -> Result<Value, String> {
    let origin = start_origin(true)?;
    let (tls_port, origin_cert) = origin.tls.clone().expect("a TLS origin");
    let sidekey = start_sidekey(&origin, "sidekey", sidekey, Run { intercept: true, ..Run::default() })?;
    let proxy: SocketAddr = sidekey.url.strip_prefix("http://").unwrap().trim_end_matches("/x").parse().unwrap();
    let sidekey_ca = client_tls(&sidekey._dir.path().join("intercept-ca.crt"))?;
    let origin_tls = client_tls(&origin_cert)?;
    let origin_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let request = |host: &str| format!("GET /x HTTP/1.1\r\nHost: {host}\r\nUser-Agent: load\r\nAccept: */*\r\n\r\n");
    // Per target, per round: (p50, p99, sidekey CPU µs per request).
    type Round = (f64, f64, Option<f64>);
    let mut figures: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
    for round in 1..=rounds {
        eprintln!("load: interception round {round} of {rounds}");
        let mut order = ["direct TLS", "sidekey route", "sidekey intercepted"];
        let targets = order.len();
        order.rotate_left((round - 1) % targets);
        for target in order {
            let cpu_before = sidekey.cpu_us().0;
            let (p, n) = match target {
                "direct TLS" => {
                    let mut s = tls_connect(origin_addr, None, "localhost", &origin_tls)?;
                    sequential(&mut s, request("localhost").as_bytes(), secs)?
                }
                "sidekey route" => {
                    let mut s = std::net::TcpStream::connect(proxy).map_err(|e| e.to_string())?;
                    s.set_nodelay(true).map_err(|e| e.to_string())?;
                    sequential(&mut s, request("127.0.0.1").as_bytes(), secs)?
                }
                _ => {
                    let mut s = tls_connect(proxy, Some("origin.test:443"), "origin.test", &sidekey_ca)?;
                    sequential(&mut s, request("origin.test").as_bytes(), secs)?
                }
            };
            let cpu = (target != "direct TLS").then(|| (sidekey.cpu_us().0 - cpu_before) as f64 / n as f64);
            eprintln!(
                "load:   {target:20} c1 p50 {:.0} µs p99 {:.0} µs, {n} requests, sidekey CPU {} µs/req",
                p[0],
                p[1],
                cpu.map_or("-".into(), |c| format!("{c:.1}"))
            );
            figures.entry(target).or_default().push((p[0], p[1], cpu));
        }
    }
    // New connections: a TLS handshake with the origin, against CONNECT plus a handshake with
    // sidekey (its leaf for the host cached after the first).
    let mut new_conn: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..200 {
        for target in ["direct TLS", "sidekey intercepted"] {
            let t = Instant::now();
            let mut s = match target {
                "direct TLS" => tls_connect(origin_addr, None, "localhost", &origin_tls)?,
                _ => tls_connect(proxy, Some("origin.test:443"), "origin.test", &sidekey_ca)?,
            };
            let host = if target == "direct TLS" { "localhost" } else { "origin.test" };
            exchange(&mut s, request(host).as_bytes(), &mut Vec::new())?;
            new_conn.entry(target).or_default().push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let med = |v: Vec<f64>| median(v);
    let mut out = serde_json::Map::new();
    println!("\n## HTTPS interception: {rounds} rounds of {secs} s, concurrency 1, keep-alive\n");
    println!("| target | p50 µs | p99 µs | sidekey CPU µs/req | new connection + first request, median µs |");
    println!("| --- | --- | --- | --- | --- |");
    for target in ["direct TLS", "sidekey route", "sidekey intercepted"] {
        let f = &figures[target];
        let p50 = med(f.iter().map(|x| x.0).collect());
        let p99 = med(f.iter().map(|x| x.1).collect());
        let cpu = f.iter().filter_map(|x| x.2).collect::<Vec<_>>();
        let cpu = (!cpu.is_empty()).then(|| med(cpu));
        let conn = new_conn.get(target).map(|v| med(v.clone()));
        println!(
            "| {target} | {p50:.0} | {p99:.0} | {} | {} |",
            cpu.map_or("-".into(), |c| format!("{c:.1}")),
            conn.map_or("-".into(), |c| format!("{c:.0}"))
        );
        out.insert(
            target.into(),
            json!({ "p50_us": p50, "p99_us": p99, "sidekey_cpu_us_per_request": cpu, "new_connection_us": conn }),
        );
    }
    drop(sidekey);
    drop(origin);
    Ok(Value::Object(out))
}

/// Load at concurrency 64 for `secs`, the RSS read every 10 s.
fn soak_run(server: &Server, secs: u64) -> Result<Value, String> {
    eprintln!("load: soak, {} for {secs} s", server.name);
    let stop = AtomicBool::new(false);
    let (load, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = vec![server.status_kib("VmRSS:")];
            let start = Instant::now();
            let mut next = start + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    samples.push(server.status_kib("VmRSS:"));
                    next += Duration::from_secs(10);
                }
            }
            samples
        });
        let load = wrk(&server.url, 64, secs);
        stop.store(true, Ordering::Relaxed);
        (load, sampler.join().unwrap())
    });
    let load = load?;
    // The first sample is before any load; growth is measured from the first loaded one.
    let loaded = &samples[1.min(samples.len() - 1)..];
    let (first, last) = (loaded[0], *loaded.last().unwrap());
    Ok(json!({
        "target": server.name,
        "secs": secs,
        "requests": load.requests,
        "errors": load.errors,
        "rss_kib_every_10s": samples,
        "growth_kib_after_first_10s": last as i64 - first as i64,
    }))
}

/// The optional runs' results.
struct Extra {
    intercept: Option<Value>,
    rotation: Option<Vec<Value>>,
    soak: Option<Vec<Value>>,
    callgrind: Option<Vec<Value>>,
    idle: Option<Vec<Value>>,
    scaling: Option<(Vec<Value>, Value)>,
    bodies: Option<Vec<Value>>,
    h2: Option<Vec<Value>>,
    unix: Option<Vec<Value>>,
    grpc: Option<Vec<Value>>,
}

/// The results of the runs added with the second performance issue.
struct Later {
    idle: Option<Vec<Value>>,
    scaling: Option<(Vec<Value>, Value)>,
    bodies: Option<Vec<Value>>,
    h2: Option<Vec<Value>>,
    unix: Option<Vec<Value>>,
    grpc: Option<Vec<Value>>,
}

/// A ratio of two targets' samples of one round, given that round's direct sample if any.
type RoundRatio = dyn Fn(&Sample, &Sample, Option<&Sample>) -> Option<f64>;

/// A ratio of sidekey to `peer` taken within each round (`f(sidekey, peer, direct)`), and its
/// median over the rounds. The targets of a round run one after another, so they share the
/// machine's state of that moment; on a machine whose speed drifts between rounds this is
/// steadier than the ratio of the two medians.
fn by_round(samples: &BTreeMap<&str, Vec<Sample>>, peer: &str, f: &RoundRatio) -> Option<f64> {
    let (sk, other) = (samples.get("sidekey")?, samples.get(peer)?);
    let direct = samples.get("direct");
    let ratios: Vec<f64> = sk
        .iter()
        .zip(other)
        .enumerate()
        .filter_map(|(i, (a, b))| f(a, b, direct.and_then(|d| d.get(i))))
        .filter(|r| r.is_finite())
        .collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

/// The `--c1-exact` table (medians over the rounds) and sidekey's ratios to each peer round by
/// round; the figures also go into `rows` and `versus` for the JSON result.
fn exact_table(samples: &BTreeMap<&str, Vec<Sample>>, rows: &mut [Value], versus: &mut [Value]) -> String {
    let med = |name: &str, f: &dyn Fn(&Exact) -> f64| {
        let v: Vec<f64> = samples.get(name)?.iter().filter_map(|s| s.exact.as_ref().map(f)).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let mut table = String::from(
        "\n\n| concurrency 1, timed to the ns | p10 µs | p25 µs | p50 µs | p75 µs | p90 µs | p99 µs | mean µs | added p50 | added mean |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let (direct50, direct_mean) = (med("direct", &|e| e.p50), med("direct", &|e| e.mean));
    for name in ["direct", "sidekey", "baseline", "nginx", "haproxy"] {
        let Some(p50) = med(name, &|e| e.p50) else { continue };
        let m = |f: &dyn Fn(&Exact) -> f64| med(name, f).unwrap_or(f64::NAN);
        let mean = m(&|e| e.mean);
        let added = |x: f64, d: Option<f64>| match d {
            Some(d) if name != "direct" => format!("{:+.2}", x - d),
            _ => "-".to_owned(),
        };
        table.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {p50:.2} | {:.2} | {:.2} | {:.2} | {mean:.2} | {} | {} |\n",
            m(&|e| e.p10),
            m(&|e| e.p25),
            m(&|e| e.p75),
            m(&|e| e.p90),
            m(&|e| e.p99),
            added(p50, direct50),
            added(mean, direct_mean)
        ));
        if let Some(row) = rows.iter_mut().find(|r| r["target"] == name) {
            row["exact_c1"] = json!({
                "p10_us": m(&|e| e.p10), "p25_us": m(&|e| e.p25), "p50_us": p50, "p75_us": m(&|e| e.p75),
                "p90_us": m(&|e| e.p90), "p99_us": m(&|e| e.p99), "mean_us": mean,
            });
        }
    }
    for row in versus.iter_mut() {
        let peer = row["peer"].as_str().unwrap_or_default().to_owned();
        let ratio = |f: fn(&Exact) -> f64| {
            by_round(samples, &peer, &move |a, b, d| {
                let (a, b, d) = (a.exact?, b.exact?, d?.exact?);
                Some((f(&a) - f(&d)) / (f(&b) - f(&d)))
            })
        };
        let (p50, mean) = (ratio(|e| e.p50), ratio(|e| e.mean));
        let Some(p50) = p50 else { continue };
        let mean = mean.unwrap_or(f64::NAN);
        table.push_str(&format!(
            "\nsidekey / {peer}, timed to the ns, round by round (median of each round's ratio): added p50 x{p50:.2}, added mean x{mean:.2}"
        ));
        row["exact_c1_by_round"] = json!({ "added_p50_ratio": p50, "added_mean_ratio": mean });
    }
    table
}

fn report(opts: &Opts, samples: &BTreeMap<&str, Vec<Sample>>, missing: &[String], extra: Extra) -> Result<(), String> {
    let Extra { rotation, soak, callgrind, intercept, idle, scaling, bodies, h2, unix, grpc } = extra;
    let med = |name: &str, f: &dyn Fn(&Sample) -> f64| samples.get(name).map(|v| median(v.iter().map(f).collect()));
    let direct = |f: &dyn Fn(&Sample) -> f64| med("direct", f).unwrap_or(f64::NAN);
    let mut rows = Vec::new();
    let mut table = String::from(
        "| target | p50 µs | p90 µs | p99 µs | p99.9 µs | mean µs | added p50 | added p99 | added mean | req/s (c64) | x direct | CPU µs/req | of it kernel | peak RSS MiB | errors |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for name in ["direct", "sidekey", "baseline", "nginx", "haproxy"] {
        let Some(v) = samples.get(name) else { continue };
        let m = |f: &dyn Fn(&Sample) -> f64| med(name, f).unwrap();
        let (p50, p90, p99, p999) =
            (m(&|s| s.latency.p50), m(&|s| s.latency.p90), m(&|s| s.latency.p99), m(&|s| s.latency.p999));
        let mean = m(&|s| s.latency.mean);
        let added_mean = mean - direct(&|s| s.latency.mean);
        let rps = m(&|s| s.rps);
        let cpu = v[0].cpu_us_per_request.map(|_| m(&|s| s.cpu_us_per_request.unwrap()));
        let kernel = v[0].kernel_us_per_request.map(|_| m(&|s| s.kernel_us_per_request.unwrap()));
        let rss = v.iter().filter_map(|s| s.peak_rss_kib).max().map(|k| k as f64 / 1024.0);
        let errors: u64 = v.iter().map(|s| s.errors).sum();
        let (added50, added99) = (p50 - direct(&|s| s.latency.p50), p99 - direct(&|s| s.latency.p99));
        let ratio = rps / direct(&|s| s.rps);
        let opt = |x: Option<f64>, d: usize| x.map_or("-".to_owned(), |x| format!("{x:.d$}"));
        if name == "direct" {
            table.push_str(&format!(
                "| direct | {p50:.0} | {p90:.0} | {p99:.0} | {p999:.0} | {mean:.2} | - | - | - | {rps:.0} | 1.00 | - | - | - | {errors} |\n"
            ));
        } else {
            table.push_str(&format!(
                "| {name} | {p50:.0} | {p90:.0} | {p99:.0} | {p999:.0} | {mean:.2} | {added50:+.0} | {added99:+.0} | {added_mean:+.2} | {rps:.0} | {ratio:.2} | {} | {} | {} | {errors} |\n",
                opt(cpu, 1),
                opt(kernel, 1),
                opt(rss, 1)
            ));
        }
        rows.push(json!({
            "target": name, "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999, "mean_us": mean,
            "added_p50_us": if name == "direct" { Value::Null } else { json!(added50) },
            "added_p99_us": if name == "direct" { Value::Null } else { json!(added99) },
            "added_mean_us": if name == "direct" { Value::Null } else { json!(added_mean) },
            "rps_c64": rps, "rps_vs_direct": ratio, "cpu_us_per_request": cpu, "kernel_us_per_request": kernel, "peak_rss_mib": rss, "errors": errors,
            "rounds": v.len(),
        }));
    }
    // sidekey against each peer, from the same rounds.
    let value_of = |name: &str, key: &str| rows.iter().find(|r| r["target"] == name).and_then(|r| r[key].as_f64());
    let mut versus = Vec::new();
    for peer in ["baseline", "nginx", "haproxy"] {
        let pair = |key: &str| value_of("sidekey", key).zip(value_of(peer, key));
        let Some((sk_rps, peer_rps)) = pair("rps_c64") else { continue };
        let row = json!({
            "peer": peer,
            "added_p50_ratio": pair("added_p50_us").map(|(a, b)| a / b),
            "added_p99_ratio": pair("added_p99_us").map(|(a, b)| a / b),
            "added_mean_ratio": pair("added_mean_us").map(|(a, b)| a / b),
            "rps_ratio": sk_rps / peer_rps,
            "cpu_ratio": pair("cpu_us_per_request").map(|(a, b)| a / b),
            "rss_ratio": pair("peak_rss_mib").map(|(a, b)| a / b),
        });
        let f = |k: &str| row[k].as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
        table.push_str(&format!(
            "\nsidekey / {peer}: added p50 x{}, added p99 x{}, added mean x{}, req/s x{}, CPU per request x{}, peak RSS x{}",
            f("added_p50_ratio"),
            f("added_p99_ratio"),
            f("added_mean_ratio"),
            f("rps_ratio"),
            f("cpu_ratio"),
            f("rss_ratio")
        ));
        let mut row = row;
        if samples.get("sidekey").is_some_and(|v| v.len() > 1) {
            let by_round = json!({
                "added_p50_ratio": by_round(samples, peer, &|a, b, d| Some((a.latency.p50 - d?.latency.p50) / (b.latency.p50 - d?.latency.p50))),
                "added_mean_ratio": by_round(samples, peer, &|a, b, d| Some((a.latency.mean - d?.latency.mean) / (b.latency.mean - d?.latency.mean))),
                "rps_ratio": by_round(samples, peer, &|a, b, _| Some(a.rps / b.rps)),
                "cpu_ratio": by_round(samples, peer, &|a, b, _| Some(a.cpu_us_per_request? / b.cpu_us_per_request?)),
            });
            let f = |k: &str| by_round[k].as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
            table.push_str(&format!(
                "\n  round by round (median of each round's ratio): added p50 x{}, added mean x{}, req/s x{}, CPU per request x{}",
                f("added_p50_ratio"),
                f("added_mean_ratio"),
                f("rps_ratio"),
                f("cpu_ratio")
            ));
            row["by_round"] = by_round;
        }
        versus.push(row);
    }
    if samples.values().flatten().any(|s| s.exact.is_some()) {
        table.push_str(&exact_table(samples, &mut rows, &mut versus));
    }
    if !samples.is_empty() {
        if let Some(bytes) = opts.post {
            println!("\nRequests: POST /x with a {bytes}-byte JSON body (`--post`).");
        }
        println!("\n{table}\n");
    }
    if let Some(rot) = &rotation {
        println!(
            "| rotating every {:?} | errors | req/s vs steady | p99 vs steady | stale at origin | new token at origin after \
             change (median / max ms) | a change itself, max ms | new upstream connections (steady run) |",
            opts.rotate.unwrap()
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for r in rot {
            println!(
                "| {} | {} | {:.2} | {:.2} | {} | {:.1} / {:.1} | {:.1} | {} ({}) |",
                r["target"].as_str().unwrap(),
                r["errors"],
                r["rps_ratio"].as_f64().unwrap(),
                r["p99_ratio"].as_f64().unwrap(),
                r["stale"],
                r["delay_ms_median"].as_f64().unwrap_or(f64::NAN),
                r["delay_ms_max"].as_f64().unwrap_or(f64::NAN),
                r["change_ms_max"].as_f64().unwrap_or(f64::NAN),
                r["new_upstream_connections"],
                r["steady_new_upstream_connections"],
            );
        }
    }
    if let Some(soak) = &soak {
        for r in soak {
            println!(
                "soak {}: {} s, {} requests, {} errors; RSS KiB every 10 s {}; growth after the first 10 s: {} KiB",
                r["target"].as_str().unwrap(),
                r["secs"],
                r["requests"],
                r["errors"],
                r["rss_kib_every_10s"],
                r["growth_kib_after_first_10s"]
            );
        }
    }
    if let Some(runs) = &callgrind {
        for r in runs {
            println!(
                "callgrind {}, {}: {:.0} instructions per request in sidekey's process, {:.0} of them filling or \
                 copying memory ({} requests)",
                r["target"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["instructions_per_request"].as_f64().unwrap(),
                r["of_which_mem_fill_copy"].as_f64().unwrap(),
                r["requests"]
            );
        }
    }
    if let Some(rows) = &idle {
        idle::print(rows);
    }
    if let Some((rows, rotation)) = &scaling {
        scaling::print(rows, rotation);
    }
    if let Some(rows) = &bodies {
        bodies::print(rows);
    }
    if let Some(rows) = &h2 {
        h2::print(rows);
    }
    if let Some(rows) = &unix {
        unix::print(rows);
    }
    if let Some(rows) = &grpc {
        grpc::print(rows);
    }
    let layout = link_order_coverage(&opts.sidekey);
    if let Some(l) = &layout {
        println!(
            "\nlink order: {} of the {} names in proxy/link-order.txt are in the measured sidekey binary",
            l["in_binary"], l["names"]
        );
    }
    let versions = json!({
        "sidekey": env!("CARGO_PKG_VERSION"),
        "nginx": command_line("nginx", &["-v"]),
        "haproxy": command_line("haproxy", &["-v"]),
        "wrk": command_line("wrk", &["-v"]),
        "h2load": command_line("h2load", &["--version"]),
    });
    let doc = json!({
        "machine": { "cpus": cpus(), "kernel": command_line("uname", &["-r"]) },
        "versions": versions,
        "settings": { "duration_s": opts.duration, "rounds": opts.rounds, "c1_exact": opts.exact_c1, "post_bytes": opts.post, "pinned": cpus() >= 2 && which("taskset"),
                      "tls_upstream": opts.tls_upstream, "audit": opts.audit,
                      "rotate_ms": opts.rotate.map(|d| d.as_millis() as u64) },
        "results": rows,
        "sidekey_versus": versus,
        "rotation": rotation,
        "soak": soak,
        "callgrind": callgrind,
        "intercept": intercept,
        "idle": idle,
        "scaling": scaling.as_ref().map(|s| &s.0),
        "scaling_rotation": scaling.as_ref().map(|s| &s.1),
        "bodies": bodies,
        "h2": h2,
        "unix": unix,
        "grpc": grpc,
        "link_order": layout,
        "skipped": missing,
    });
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&doc).unwrap()).map_err(|e| e.to_string())?;
    println!("result: {}", opts.out.display());
    write_svg(opts, &doc)
}

/// The run's picture (`benches/load/svg.rs`), at `--svg FILE` or beside the JSON result.
fn write_svg(opts: &Opts, doc: &Value) -> Result<(), String> {
    let path = opts.svg.clone().unwrap_or_else(|| opts.out.with_extension("svg"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&path, svg::render(doc)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("picture: {}", path.display());
    Ok(())
}

/// How many of the code order's names (`build.rs`) the binary has, read with `nm`: fewer than
/// nearly all means the order is stale (`--link-order`) or was not applied.
fn link_order_coverage(bin: &Path) -> Option<Value> {
    let order = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy/link-order.txt")).ok()?;
    let out = Command::new("nm").arg("--defined-only").arg(bin).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let symbols: std::collections::HashSet<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let names: Vec<&str> = order.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let found = names.iter().filter(|n| symbols.contains(*n)).count();
    Some(json!({ "names": names.len(), "in_binary": found }))
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    String::from_utf8(text).ok().and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
}

/// Sends one request to `url` and returns whether it got a 2xx.
fn one_request(url: &str) -> bool {
    use std::io::Read;
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let Ok(mut s) = std::net::TcpStream::connect(authority) else { return false };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 2")
}

/// Switches `server` to token `n` and waits (bounded) until the origin has seen it.
fn switch_to(server: &Server, origin: SocketAddr, n: u64) -> Result<(), String> {
    server.set_token(n)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        one_request(&server.url);
        if !origin_stats(origin)["first_seen_us"][n.to_string()].is_null() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{}: token {n} did not reach the origin within 10 s", server.name));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Per proxy: a steady concurrency-64 run, then one with the token changing every `every`.
/// Token numbers only grow over the whole run, so the origin can call a lower one stale.
fn rotation_runs(servers: &[Server], origin: SocketAddr, every: Duration, secs: u64) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut next = origin_stats(origin)["first_seen_us"]
        .as_object()
        .and_then(|m| m.keys().filter_map(|k| k.parse::<u64>().ok()).max())
        .unwrap_or(0)
        + 1;
    for server in servers {
        eprintln!("load: rotation run, {}", server.name);
        switch_to(server, origin, next)?;
        next += 1;
        let at_start = origin_stats(origin);
        let steady = wrk(&server.url, 64, secs)?;
        let before = origin_stats(origin);
        let stop = AtomicBool::new(false);
        // (token number, when the change began, when it was done): the rotator is a thread like
        // any other on a machine whose CPUs the load keeps busy, and may wait to run between
        // the two (nginx's change also starts a `kill`).
        let changes: Mutex<Vec<(u64, u64, u64)>> = Mutex::default();
        let (load, rotated) = std::thread::scope(|scope| {
            let rotator = scope.spawn(|| -> Result<(), String> {
                let mut n = next;
                let mut due = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    due += every;
                    let begun = now_us();
                    server.set_token(n)?;
                    changes.lock().unwrap().push((n, begun, now_us()));
                    n += 1;
                }
                Ok(())
            });
            let load = wrk(&server.url, 64, secs);
            stop.store(true, Ordering::Relaxed);
            (load, rotator.join().unwrap())
        });
        let load = load?;
        rotated?;
        let changes = changes.into_inner().unwrap();
        next = changes.last().map_or(next, |(n, _, _)| n + 1);
        // The origin's view, once the last change has had time to arrive.
        std::thread::sleep(Duration::from_millis(200));
        let after = origin_stats(origin);
        let first_seen = &after["first_seen_us"];
        // From the end of each change (the file renamed, the signal sent, the map set), and from
        // its start.
        let delays_from = |at: fn(&(u64, u64, u64)) -> u64| {
            let mut d: Vec<f64> = changes
                .iter()
                .filter_map(|c| {
                    first_seen[c.0.to_string()].as_u64().map(|seen| seen.saturating_sub(at(c)) as f64 / 1000.0)
                })
                .collect();
            d.sort_by(|a, b| a.partial_cmp(b).unwrap());
            d
        };
        let delays = delays_from(|c| c.2);
        let from_start = delays_from(|c| c.1);
        let change_ms_max = changes.iter().map(|c| c.2.saturating_sub(c.1)).max().unwrap_or(0) as f64 / 1000.0;
        let count = |v: &Value, k: &str| v[k].as_u64().unwrap();
        out.push(json!({
            "target": server.name,
            "changes": changes.len(),
            "changes_seen_at_origin": delays.len(),
            "errors": load.errors,
            "steady_rps": steady.requests as f64 / steady.duration_s,
            "rotating_rps": load.requests as f64 / load.duration_s,
            "rps_ratio": (load.requests as f64 / load.duration_s) / (steady.requests as f64 / steady.duration_s),
            "steady_p99_us": steady.p99,
            "rotating_p99_us": load.p99,
            "p99_ratio": load.p99 / steady.p99,
            "stale": count(&after, "stale") - count(&before, "stale"),
            "delay_ms_median": if delays.is_empty() { Value::Null } else { json!(median(delays.clone())) },
            "delay_ms_max": delays.last(),
            "delay_from_start_ms_max": from_start.last(),
            "change_ms_max": change_ms_max,
            "new_upstream_connections": count(&after, "connections") - count(&before, "connections"),
            "steady_new_upstream_connections": count(&before, "connections") - count(&at_start, "connections"),
        }));
    }
    Ok(out)
}
