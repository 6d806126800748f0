//! `--h2`: the HTTP/2 paths, against an origin serving HTTP/2 over TLS 1.3 (ALPN `h2`, its
//! certificate trusted and verified by each proxy).
//!
//! - h2c in, HTTP/2 upstream: h2load (nghttp2-client; 4 connections of 16 concurrent streams,
//!   HTTP/2 with prior knowledge) against sidekey (one multiplexed upstream connection),
//!   HAProxy (`proto h2` in, `alpn h2` out), nginx with `grpc_pass` (its one HTTP/2 upstream,
//!   which carries any HTTP/2 request) and nginx with `proxy_pass` (HTTP/1.1 upstream: nginx's
//!   HTTP proxy has no other), and the origin directly over TLS for reference.
//! - HTTP/1.1 clients, HTTP/2 upstream: wrk at concurrency 64 against sidekey, HAProxy and
//!   nginx with `grpc_pass`, and nginx with `proxy_pass` over TLS HTTP/1.1 for reference.
//!
//! Per round and target, a fresh proxy instance, a warm-up, then `--duration` of load:
//! requests/s, mean latency, the proxy's CPU per request, errors, and the connections the
//! origin accepted from that instance over its warm-up and run, and within the run alone (the
//! most in a round; h2load's direct run opens 4 each time). Pinned as the comparison rounds are (load generator and
//! origin on CPU 0, the proxy on CPU 1).

use serde_json::{json, Value};

use super::{median, Origin, Server};

/// The figures of one run.
#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    mean_us: f64,
    cpu: Option<f64>,
    errors: u64,
    /// The connections the origin accepted from the proxy instance: over its warm-up and run,
    /// and within the measured run alone.
    upstream: u64,
    upstream_in_run: u64,
}

/// h2load's figures for `secs` of load: (req/s, mean µs, requests succeeded, errors).
fn h2load(url: &str, secs: u64) -> Result<(f64, f64, u64, u64), String> {
    let args = ["-c", "4", "-m", "16", "-t", "1", "-D", &secs.to_string(), url];
    let out = super::pinned(0, "h2load")
        .args(args)
        .output()
        .map_err(|e| format!("h2load: {e} (benches/load/setup.sh installs nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(str::to_owned)
            .ok_or_else(|| format!("h2load printed no {prefix:?} line: {text}{}", String::from_utf8_lossy(&out.stderr)))
    };
    // "finished in 10.00s, 81234.50 req/s, 2.33MB/s"
    let finished = line("finished in")?;
    let rps: f64 = finished
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("h2load: {finished}"))?;
    // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let requests = line("requests:")?;
    let count = |what: &str| -> u64 {
        requests
            .split(", ")
            .find_map(|p| p.trim().strip_suffix(what)?.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let (succeeded, errors) = (count(" succeeded"), count(" failed") + count(" errored") + count(" timeout"));
    // "time for request:    1.23ms   4.56ms   2.00ms   0.50ms   70.00%": min, max, mean.
    let timing = line("time for request:")?;
    let mean = timing
        .split_whitespace()
        .nth(5)
        .and_then(|v| {
            let (number, scale) = match v {
                v if v.ends_with("us") => (&v[..v.len() - 2], 1.0),
                v if v.ends_with("ms") => (&v[..v.len() - 2], 1e3),
                v if v.ends_with('s') => (&v[..v.len() - 1], 1e6),
                _ => return None,
            };
            number.parse::<f64>().ok().map(|n| n * scale)
        })
        .ok_or_else(|| format!("h2load: {timing}"))?;
    Ok((rps, mean, succeeded, errors))
}

/// The origin's count of accepted connections (the one that reads it included).
fn origin_connections(origin: &Origin) -> u64 {
    super::origin_stats(origin.plain)["connections"].as_u64().unwrap_or(0)
}

/// A warm-up and a run against `url`, `started` the origin's connection count read before the
/// proxy instance started.
fn measure(
    origin: &Origin,
    url: &str,
    server: Option<&Server>,
    secs: u64,
    h2c: bool,
    started: u64,
) -> Result<Figures, String> {
    let before = |s: Option<&Server>| s.map(|s| s.cpu_us().0);
    if h2c {
        h2load(url, 1)?;
    } else {
        super::wrk(url, 64, 1)?;
    }
    let warm = origin_connections(origin);
    let cpu = before(server);
    let (rps, mean_us, done, errors) = if h2c {
        h2load(url, secs)?
    } else {
        let load = super::wrk(url, 64, secs)?;
        (load.requests as f64 / load.duration_s, load.mean, load.requests, load.errors)
    };
    let cpu = server.zip(cpu).map(|(s, b)| (s.cpu_us().0 - b) as f64 / done.max(1) as f64);
    // Each count's own connection is left out.
    let end = origin_connections(origin);
    Ok(Figures { rps, mean_us, cpu, errors, upstream: end - started - 2, upstream_in_run: end - warm - 1 })
}

fn start(opts: &super::Opts, origin: &Origin, target: &str, h2c: bool) -> Result<Option<Server>, String> {
    let nginx = |grpc| super::start_nginx_with(origin, super::NginxOpts { h2c, grpc, ..Default::default() });
    Ok(Some(match target {
        "direct" => return Ok(None),
        "sidekey" => super::start_sidekey(origin, "sidekey", &opts.sidekey, super::Run::default())?,
        "haproxy" => super::start_haproxy_with(origin, h2c)?,
        "nginx grpc_pass" => nginx(true)?,
        _ => nginx(false)?,
    }))
}

/// The HTTP/2 runs (see the module doc).
pub fn h2_runs(opts: &super::Opts, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<Value>, String> {
    let origin = super::start_origin_full(true, 1, true)?;
    let (tls_port, _) = origin.tls.clone().expect("a TLS origin");
    let rounds = opts.rounds.max(1);
    let mut figures: Vec<((&str, &str), Vec<Figures>)> = Vec::new();
    for (path, h2c) in [("h2c in, HTTP/2 upstream", true), ("HTTP/1.1 in, HTTP/2 upstream", false)] {
        let mut targets = vec!["sidekey", "haproxy", "nginx grpc_pass", "nginx proxy_pass (HTTP/1.1 upstream)"];
        targets.retain(|t| wanted(t.split(' ').next().unwrap()));
        if h2c {
            targets.insert(0, "direct");
        }
        for round in 1..=rounds {
            eprintln!("load: HTTP/2, {path}, round {round} of {rounds}");
            let mut order = targets.clone();
            let shift = (round - 1) % order.len().max(1);
            order.rotate_left(shift);
            for target in order {
                let started = origin_connections(&origin);
                let server = start(opts, &origin, target, h2c)?;
                let url = server.as_ref().map_or(format!("https://127.0.0.1:{tls_port}/x"), |s| s.url.clone());
                let f = measure(&origin, &url, server.as_ref(), opts.duration, h2c, started)?;
                eprintln!(
                    "load:   {target:36} {:.0} req/s, mean {:.0} µs, {} µs CPU/req, {} errors, {} upstream connections \
                     ({} in the measured run)",
                    f.rps,
                    f.mean_us,
                    f.cpu.map_or("-".into(), |c| format!("{c:.1}")),
                    f.errors,
                    f.upstream,
                    f.upstream_in_run
                );
                match figures.iter_mut().find(|x| x.0 == (path, target)) {
                    Some(x) => x.1.push(f),
                    None => figures.push(((path, target), vec![f])),
                }
            }
        }
    }
    let stats = super::origin_stats(origin.plain);
    eprintln!("load: HTTP/2 origin: {} connections over the runs", stats["connections"]);
    Ok(figures
        .into_iter()
        .map(|((path, target), f)| {
            let cpu: Vec<f64> = f.iter().filter_map(|x| x.cpu).collect();
            json!({
                "path": path, "target": target,
                "rps": median(f.iter().map(|x| x.rps).collect()),
                "mean_us": median(f.iter().map(|x| x.mean_us).collect()),
                "cpu_us_per_request": (!cpu.is_empty()).then(|| median(cpu)),
                "errors": f.iter().map(|x| x.errors).sum::<u64>(),
                "upstream_connections_max": f.iter().map(|x| x.upstream).max(),
                "upstream_connections_in_run_max": f.iter().map(|x| x.upstream_in_run).max(),
                "rounds": f.len(),
            })
        })
        .collect())
}

/// The HTTP/2 table.
pub fn print(rows: &[Value]) {
    println!(
        "\n| HTTP/2 | target | req/s | mean µs | CPU µs/req | errors | upstream connections, warm-up and run (in the run) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let f = |k: &str, d: usize| r[k].as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} ({}) |",
            r["path"].as_str().unwrap_or_default(),
            r["target"].as_str().unwrap_or_default(),
            f("rps", 0),
            f("mean_us", 0),
            f("cpu_us_per_request", 1),
            r["errors"],
            r["upstream_connections_max"],
            r["upstream_connections_in_run_max"]
        );
    }
}
