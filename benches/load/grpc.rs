//! `--grpc`: a unary gRPC call's added latency at concurrency 1.
//!
//! The server is grpcio (gRPC's C core, with its Python handlers: the `echo.Echo` service of
//! `tests/servers/grpc/echo.py`, as the gRPC tests start it; `SIDEKEY_GRPC_VENV` or
//! `/opt/sidekey-grpc-venv`), over TLS 1.3 with a fresh self-signed certificate each proxy
//! trusts and verifies. The client is this program's own (`--grpc-client`: hyper's HTTP/2
//! client on one connection, one call at a time): `POST /echo.Echo/Say` with
//! `content-type: application/grpc` and `te: trailers`, a length-prefixed 5-byte message, and
//! a call counts once its answer's message and its trailers are in, with `grpc-status: 0`. It
//! calls:
//! - the server directly (TLS, ALPN `h2`);
//! - sidekey (h2c in, the token injected, HTTP/2 over TLS to the server);
//! - nginx with `grpc_pass grpcs://` (h2c in, `grpc_set_header Authorization`).
//!
//! The server answers with the `authorization` it was sent: each proxy's run checks its
//! token arrived. Pinned as the comparison rounds' latency run is (client, server and proxy on
//! CPU 0), targets alternating within each round; each call timed from its request to its
//! trailers, to the ns: p50, p99, mean, each less the direct run's of the same round (the
//! added latency), and the proxy's CPU time per call. The server's own time is most of a
//! call's (a Python handler behind the C core): the added figures are what to read.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{median, Origin, Server};

/// The message each call sends (the service answers it back with the `authorization` seen).
const MESSAGE: &[u8] = b"hello";

fn python() -> PathBuf {
    let venv = std::env::var("SIDEKEY_GRPC_VENV").unwrap_or_else(|_| "/opt/sidekey-grpc-venv".into());
    Path::new(&venv).join("bin/python")
}

/// The grpcio server on TLS, as an [`Origin`] the proxies' starters take (its TLS port and
/// certificate; it serves no plain HTTP, and keeps no origin statistics).
fn start_server() -> Result<Origin, String> {
    let python = python();
    if !python.exists() {
        return Err(format!("{} is missing: grpcio is not installed (tests/servers/install.sh)", python.display()));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| e.to_string())?;
    let (cert_file, key_file) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_file, cert.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/grpc/echo.py");
    let mut child: Child = super::pinned(0, &python.to_string_lossy())
        .arg(script)
        .arg("serve")
        .args([&cert_file, &key_file])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("gRPC server: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).map_err(|e| e.to_string())?;
    let port: u16 = line.trim().parse().map_err(|_| format!("the gRPC server did not start: {line:?}"))?;
    Ok(Origin {
        child,
        plain: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        tls: Some((port, cert_file)),
        h2: true,
        _dir: dir,
    })
}

/// The `--grpc-client URL SECS CA` mode: unary calls one at a time on one HTTP/2 connection
/// to `URL` (`http://HOST:PORT`: h2c with prior knowledge; `https://HOST:PORT`: TLS trusting
/// only the PEM file `CA`, `-` for none), for `secs` (the first 200 ms not counted). Returns
/// the JSON line the harness reads: the calls counted, the percentiles in µs, and the
/// `authorization` the server reported for the last call.
pub fn grpc_client(url: &str, secs: f64, ca: Option<&Path>) -> Result<String, String> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (tls, authority) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(a), _) => (true, a),
            (_, Some(a)) => (false, a),
            _ => return Err(format!("{url}: http:// or https:// only")),
        };
        let authority = authority.trim_end_matches('/');
        let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("{authority}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        let mut sender = if tls {
            let mut config = (*super::client_tls(ca.ok_or("https:// needs a CA file")?)?).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (sender, conn) = builder
                .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(conn);
            sender
        } else {
            let (sender, conn) = builder
                .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(conn);
            sender
        };
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(MESSAGE.len() as u32).to_be_bytes());
        frame.extend_from_slice(MESSAGE);
        let frame = Bytes::from(frame);
        let uri = format!("{}://{authority}/echo.Echo/Say", if tls { "https" } else { "http" });
        let (start, mut authorization) = (Instant::now(), Value::Null);
        let (warm, end) = (start + Duration::from_millis(200), start + Duration::from_secs_f64(secs));
        let mut lat: Vec<u64> = Vec::with_capacity(1_000_000);
        loop {
            let t0 = Instant::now();
            if t0 >= end {
                break;
            }
            let request = hyper::Request::post(&uri)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(frame.clone()))
                .map_err(|e| e.to_string())?;
            let answer = sender.send_request(request).await.map_err(|e| format!("a call: {e}"))?;
            if answer.status() != 200 {
                return Err(format!("a call got HTTP status {}", answer.status()));
            }
            let (parts, body) = answer.into_parts();
            let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
                .await
                .map_err(|_| "no answer within 10 s".to_owned())?
                .map_err(|e| format!("an answer's body: {e}"))?;
            let elapsed = t0.elapsed();
            // The status is in the trailers, or in the head of a trailers-only answer.
            let status =
                body.trailers().and_then(|t| t.get("grpc-status")).or_else(|| parts.headers.get("grpc-status"));
            if status.map(|s| s.as_bytes()) != Some(b"0") {
                return Err(format!("a call ended with grpc-status {status:?}"));
            }
            let message = body.to_bytes();
            if message.len() < 5
                || message[0] != 0
                || u32::from_be_bytes(message[1..5].try_into().unwrap()) as usize != message.len() - 5
            {
                return Err("an answer that is not one gRPC message".into());
            }
            if t0 >= warm {
                lat.push(elapsed.as_nanos() as u64);
            } else {
                let said: Value = serde_json::from_slice(&message[5..]).map_err(|e| format!("the answer: {e}"))?;
                if said["body"].as_str().map(str::as_bytes) != Some(MESSAGE) {
                    return Err(format!("the server answered {said}, not the message sent"));
                }
                authorization = said["authorization"].clone();
            }
        }
        if lat.is_empty() {
            return Err("no call was timed".into());
        }
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1e3;
        let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e3;
        Ok(json!({ "calls": lat.len(), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "mean": mean,
                   "authorization": authorization })
        .to_string())
    })
}

/// One round's figures for one target.
#[derive(Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    mean: f64,
    cpu: Option<f64>,
}

/// A `--grpc-client` run beside the load generator's CPU, the proxy moved there too.
fn measure(url: &str, ca: &Path, server: Option<&Server>, secs: u64) -> Result<Figures, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = |secs: u64| -> Result<Value, String> {
        let out = super::pinned(0, &me.to_string_lossy())
            .args(["--grpc-client", url, &secs.to_string()])
            .arg(ca)
            .output()
            .map_err(|e| format!("gRPC client: {e}"))?;
        super::json_line(&out, "GRPC_JSON ", "the gRPC client")
    };
    let pids = server.map(Server::pids).unwrap_or_default();
    super::move_to(&pids, 0)?;
    run(1)?;
    let before = server.map(|s| s.cpu_us().0);
    let v = run(secs);
    super::move_to(&pids, 1)?;
    let v = v?;
    if let Some(s) = server {
        let expected = "Bearer rot-000000";
        if v["authorization"] != expected {
            return Err(format!(
                "{}: the gRPC server saw authorization {} (not {expected:?})",
                s.name, v["authorization"]
            ));
        }
    }
    let f = |k: &str| v[k].as_f64().ok_or_else(|| format!("gRPC client: no {k} in {v}"));
    let calls = f("calls")?;
    Ok(Figures {
        p50: f("p50")?,
        p99: f("p99")?,
        mean: f("mean")?,
        cpu: server.zip(before).map(|(s, b)| (s.cpu_us().0 - b) as f64 / calls.max(1.0)),
    })
}

/// The gRPC runs (see the module doc).
pub fn grpc_runs(opts: &super::Opts, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<Value>, String> {
    let server = start_server()?;
    let (port, ca) = server.tls.clone().expect("the gRPC server is on TLS");
    let mut targets: Vec<(&str, Option<Server>)> = vec![("direct", None)];
    if wanted("sidekey") {
        let s = super::start_sidekey(&server, "sidekey", &opts.sidekey, super::Run::default())?;
        targets.push(("sidekey", Some(s)));
    }
    if wanted("nginx") {
        match super::start_nginx_with(&server, super::NginxOpts { h2c: true, grpc: true, ..Default::default() }) {
            Ok(s) => targets.push(("nginx grpc_pass", Some(s))),
            Err(e) => eprintln!("load: gRPC rows: skipping nginx: {e}"),
        }
    }
    let rounds = opts.rounds.max(1);
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        eprintln!("load: gRPC unary calls, round {round} of {rounds}");
        let mut order: Vec<usize> = (0..targets.len()).collect();
        let shift = (round - 1) % order.len();
        order.rotate_left(shift);
        for i in order {
            let (name, proxy) = (&targets[i].0, targets[i].1.as_ref());
            // h2c to a proxy; TLS to the server itself.
            let url = proxy.map_or(format!("https://127.0.0.1:{port}"), |s| s.url.trim_end_matches("/x").to_owned());
            let f = measure(&url, &ca, proxy, opts.duration)?;
            eprintln!(
                "load:   {name:16} unary call p50 {:.2} µs p99 {:.2} µs mean {:.2} µs, proxy CPU {} µs/call",
                f.p50,
                f.p99,
                f.mean,
                f.cpu.map_or("-".into(), |c| format!("{c:.1}"))
            );
            figures[i].push(f);
        }
    }
    let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
    drop(targets);
    drop(server);
    let med = |f: &[Figures], g: fn(&Figures) -> f64| median(f.iter().map(g).collect());
    let (d50, d99, dmean) = (med(&figures[0], |f| f.p50), med(&figures[0], |f| f.p99), med(&figures[0], |f| f.mean));
    let mut rows = Vec::new();
    for (name, f) in names.iter().zip(&figures) {
        let cpu: Vec<f64> = f.iter().filter_map(|x| x.cpu).collect();
        let (p50, p99, mean) = (med(f, |x| x.p50), med(f, |x| x.p99), med(f, |x| x.mean));
        let proxied = *name != "direct";
        rows.push(json!({
            "target": name, "p50_us": p50, "p99_us": p99, "mean_us": mean,
            "added_p50_us": proxied.then_some(p50 - d50), "added_p99_us": proxied.then_some(p99 - d99),
            "added_mean_us": proxied.then_some(mean - dmean),
            "cpu_us_per_call": (!cpu.is_empty()).then(|| median(cpu)),
            "rounds": f.len(),
        }));
    }
    Ok(rows)
}

/// The gRPC table.
pub fn print(rows: &[Value]) {
    println!("\n| unary gRPC call, concurrency 1 | p50 µs | p99 µs | mean µs | added p50 | added p99 | added mean | proxy CPU µs/call |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let f = |k: &str| r[k].as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        let added = |k: &str| r[k].as_f64().map_or("-".into(), |x| format!("{x:+.2}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r["target"].as_str().unwrap_or_default(),
            f("p50_us"),
            f("p99_us"),
            f("mean_us"),
            added("added_p50_us"),
            added("added_p99_us"),
            added("added_mean_us"),
            r["cpu_us_per_call"].as_f64().map_or("-".into(), |x| format!("{x:.1}"))
        );
    }
}
