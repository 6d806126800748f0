//! `--idle`: what an idle keep-alive client connection costs each proxy in memory.
//!
//! Per proxy (and the `--baseline` build, beside sidekey) and round, a fresh instance (its
//! connection cap raised above the count: sidekey's `[limits] max_connections`, nginx's
//! `worker_connections`, HAProxy's `maxconn`; the harness raises its own `RLIMIT_NOFILE`,
//! which the proxies inherit) serves a few warm-up requests; then N connections each send one request, read its answer whole, and stay open, waiting
//! as a client library's pooled connection waits for its next request. The proxy must hold
//! all N (its established sockets on its port, from `/proc/net/tcp`; for sidekey also its
//! `sidekey_open_connections` gauge); the figure is its processes' `VmRSS` with them less
//! before them, over N, in bytes. The RSS after they are closed is reported too (what the
//! proxy gives back).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{exchange, load_request, median, Origin, Run, Server};

/// While set (non-zero), the proxies the harness starts accept this many client connections
/// at least. Only the idle runs set it: a larger `worker_connections` makes nginx's worker
/// allocate and touch larger connection tables at start, which would move the comparison
/// rounds' peak RSS.
pub static CONN_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// The connection cap for a proxy just starting: `default`, or well above the idle runs'
/// count: nginx starts closing idle keep-alive connections once fewer than a sixteenth of its
/// `worker_connections` are free.
pub fn conn_limit(default: usize) -> usize {
    match CONN_LIMIT.load(Ordering::Relaxed) {
        0 => default,
        n => default.max(n + n / 4 + 256),
    }
}

/// Restores [`CONN_LIMIT`] however the idle runs end.
struct Limit;

impl Drop for Limit {
    fn drop(&mut self) {
        CONN_LIMIT.store(0, Ordering::Relaxed);
    }
}

/// Raises this process's open-file limit (soft and, as root, hard) to at least `need`; the
/// processes it starts inherit it.
pub fn raise_nofile(need: u64) -> Result<(), String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write and read the one struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    let wanted = libc::rlimit { rlim_cur: need, rlim_max: lim.rlim_max.max(need) };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(format!(
        "cannot raise the open-file limit to {need} (soft {}, hard {}): {err}; run as root or raise `ulimit -Hn`",
        lim.rlim_cur, lim.rlim_max
    ))
}

/// This process's hard open-file limit.
fn hard_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the one struct passed.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_max
}

/// Client sockets in state ESTABLISHED whose local port is `port` on 127.0.0.1: the
/// connections a proxy listening there holds open.
fn established_on(port: u16) -> Result<usize, String> {
    let text = std::fs::read_to_string("/proc/net/tcp").map_err(|e| format!("/proc/net/tcp: {e}"))?;
    let local = format!("0100007F:{port:04X}");
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "01"
        })
        .count())
}

/// sidekey's `sidekey_open_connections{listener="proxy"}`, from its admin API.
fn open_connections_gauge(admin: &str) -> Result<u64, String> {
    let text = super::http_get(admin, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with("sidekey_open_connections{") && l.contains("listener=\"proxy\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "no sidekey_open_connections{listener=\"proxy\"} in /metrics".to_owned())
}

fn port_of(server: &Server) -> u16 {
    let rest = server.url.strip_prefix("http://").unwrap();
    rest[..rest.find('/').unwrap()].rsplit(':').next().unwrap().parse().unwrap()
}

/// Waits (bounded) until `port` has exactly `n` established client connections.
fn wait_established(port: u16, n: usize) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = established_on(port)?;
        if count == n || Instant::now() > deadline {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One proxy's idle run: the figures of one fresh instance.
fn one(server: &Server, n: usize) -> Result<Value, String> {
    let port = port_of(server);
    super::keep_alive_requests(&server.url, 200)?;
    // The warm-up connection is closed: wait for the proxy to let it go too.
    let before_count = wait_established(port, 0)?;
    if before_count != 0 {
        return Err(format!("{}: {before_count} connections still open before the idle run", server.name));
    }
    let rss_before = server.status_kib("VmRSS:");
    let authority = format!("127.0.0.1:{port}");
    let request = load_request(&authority, "/x");
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = std::net::TcpStream::connect(&authority).map_err(|e| format!("connection {i}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        exchange(&mut s, request.as_bytes(), &mut Vec::new()).map_err(|e| format!("connection {i}: {e}"))?;
        conns.push(s);
    }
    let accepted = wait_established(port, n)?;
    if accepted != n {
        return Err(format!("{}: {accepted} of {n} idle connections held open", server.name));
    }
    let gauge = match &server.admin {
        Some(admin) => {
            let g = open_connections_gauge(admin)?;
            if g != n as u64 {
                return Err(format!("{}: sidekey_open_connections is {g} with {n} idle connections", server.name));
            }
            Some(g)
        }
        None => None,
    };
    let rss_with = server.status_kib("VmRSS:");
    drop(conns);
    let after_count = wait_established(port, 0)?;
    let rss_after = server.status_kib("VmRSS:");
    let per = (rss_with as f64 - rss_before as f64) * 1024.0 / n as f64;
    eprintln!(
        "load:   {:8} {n} idle connections: RSS {rss_before} -> {rss_with} KiB ({per:.0} bytes each), \
         {rss_after} KiB once closed ({after_count} left)",
        server.name
    );
    Ok(json!({
        "accepted": accepted, "open_connections_gauge": gauge, "rss_before_kib": rss_before,
        "rss_with_kib": rss_with, "rss_after_close_kib": rss_after, "bytes_per_connection": per,
    }))
}

/// The idle runs (see the module doc): `rounds` fresh instances of each wanted proxy, in turn.
pub fn idle_runs(
    opts: &super::Opts,
    origin: &Origin,
    n: usize,
    rounds: usize,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<Value>, String> {
    // Per process: the harness's N client sockets; the proxy's N, its upstream and listening
    // ones and its files.
    raise_nofile(n as u64 + n as u64 / 4 + 1024)?;
    CONN_LIMIT.store(n, Ordering::Relaxed);
    let _restore = Limit;
    let mut figures: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // HAProxy refuses to start unless it may open two descriptors per connection of its
    // `maxconn` (and cannot raise a hard limit without privilege).
    let haproxy_fds = 2 * conn_limit(0) as u64 + 64;
    let haproxy_skipped = (wanted("haproxy") && hard_nofile() < haproxy_fds).then(|| {
        format!("haproxy: needs an open-file limit of {haproxy_fds} for maxconn {} (`ulimit -Hn`)", conn_limit(0))
    });
    if let Some(why) = &haproxy_skipped {
        eprintln!("load: idle connections: skipping {why}");
    }
    for round in 1..=rounds {
        eprintln!("load: idle connections, round {round} of {rounds}");
        for name in ["sidekey", "baseline", "nginx", "haproxy"] {
            let wanted = match name {
                "baseline" => opts.baseline.is_some(),
                "haproxy" => wanted(name) && haproxy_skipped.is_none(),
                _ => wanted(name),
            };
            if !wanted {
                continue;
            }
            let server = match (name, &opts.baseline) {
                ("sidekey", _) => super::start_sidekey(origin, "sidekey", &opts.sidekey, Run::default())?,
                ("baseline", Some(bin)) => super::start_sidekey(origin, "baseline", bin, Run::default())?,
                ("nginx", _) => super::start_nginx(origin)?,
                _ => super::start_haproxy(origin)?,
            };
            let v = one(&server, n)?;
            drop(server);
            match figures.iter_mut().find(|f| f.0 == name) {
                Some(f) => f.1.push(v),
                None => figures.push((name, vec![v])),
            }
        }
    }
    let nginx = figures
        .iter()
        .find(|f| f.0 == "nginx")
        .map(|f| median(f.1.iter().map(|v| v["bytes_per_connection"].as_f64().unwrap()).collect()));
    let skipped = haproxy_skipped.map(|why| json!({ "target": "haproxy", "connections": n, "skipped": why }));
    Ok(figures
        .into_iter()
        .map(|(name, runs)| {
            let m = |k: &str| median(runs.iter().map(|v| v[k].as_f64().unwrap()).collect());
            let per = m("bytes_per_connection");
            json!({
                "target": name, "connections": n, "rounds": runs.len(),
                "bytes_per_connection": per,
                "vs_nginx": nginx.map(|b| per / b),
                "rss_before_kib": m("rss_before_kib"), "rss_with_kib": m("rss_with_kib"),
                "rss_after_close_kib": m("rss_after_close_kib"),
                "runs": runs,
            })
        })
        .chain(skipped)
        .collect())
}

/// The idle runs' table.
pub fn print(rows: &[Value]) {
    let Some(n) = rows.first().map(|r| r["connections"].clone()) else { return };
    println!(
        "\n| {n} idle keep-alive connections | bytes per connection | x nginx | RSS before MiB | with them MiB | once closed MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        if let Some(why) = r["skipped"].as_str() {
            println!("| {} | skipped: {why} | | | | |", r["target"].as_str().unwrap_or_default());
            continue;
        }
        let mib = |k: &str| r[k].as_f64().unwrap_or(f64::NAN) / 1024.0;
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
            r["target"].as_str().unwrap_or_default(),
            r["bytes_per_connection"].as_f64().unwrap_or(f64::NAN),
            r["vs_nginx"].as_f64().map_or("-".into(), |x| format!("{x:.2}")),
            mib("rss_before_kib"),
            mib("rss_with_kib"),
            mib("rss_after_close_kib"),
        );
    }
}
