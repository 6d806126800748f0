//! `--bodies`: large bodies at concurrency 16.
//!
//! Four cases: 1 MiB and 16 MiB answers (`GET /bytes/N` from the origin), and 1 MiB and
//! 16 MiB uploads (`POST /x`, the origin reads the body and answers `ok`). Per case, round and
//! target (direct; sidekey; nginx with `proxy_buffering` and `proxy_request_buffering` on, as
//! nginx runs by default, and off; HAProxy), a fresh proxy instance, pinned as the
//! comparison rounds pin it: a 1 s warm-up, then wrk (concurrency 16) for `--duration`. Reported:
//! MiB/s of bodies carried, requests/s, the proxy's CPU time per request, its peak RSS
//! (`VmHWM`, the instance having served only this case), errors.

use serde_json::{json, Value};

use super::{median, Origin, Server};

const MIB: usize = 1 << 20;
const CASES: [(&str, usize, bool); 4] = [
    ("download 1 MiB", MIB, false),
    ("download 16 MiB", 16 * MIB, false),
    ("upload 1 MiB", MIB, true),
    ("upload 16 MiB", 16 * MIB, true),
];
const TARGETS: [&str; 5] = ["direct", "sidekey", "nginx buffering on", "nginx buffering off", "haproxy"];

/// One case's figures for one target: (MiB/s, req/s, CPU µs per request, peak RSS KiB, errors).
type Figures = (f64, f64, Option<f64>, Option<u64>, u64);

fn start(opts: &super::Opts, origin: &Origin, target: &str) -> Result<Option<Server>, String> {
    let nginx = |on| super::start_nginx_with(origin, super::NginxOpts { buffering: Some(on), ..Default::default() });
    Ok(Some(match target {
        "direct" => return Ok(None),
        "sidekey" => super::start_sidekey(origin, "sidekey", &opts.sidekey, super::Run::default())?,
        "nginx buffering on" => nginx(true)?,
        "nginx buffering off" => nginx(false)?,
        _ => super::start_haproxy(origin)?,
    }))
}

fn measure(url: &str, server: Option<&Server>, size: usize, upload: bool, secs: u64) -> Result<Figures, String> {
    let url = if upload { url.to_owned() } else { url.replace("/x", &format!("/bytes/{size}")) };
    let post = upload.then_some(size);
    super::wrk_with(&url, 1, 16, 1, post)?;
    let before = server.map(|s| s.cpu_us().0);
    let load = super::wrk_with(&url, 1, 16, secs, post)?;
    let rps = load.requests as f64 / load.duration_s;
    let cpu = server.zip(before).map(|(s, b)| (s.cpu_us().0 - b) as f64 / load.requests.max(1) as f64);
    Ok((rps * size as f64 / MIB as f64, rps, cpu, server.map(Server::peak_rss_kib), load.errors))
}

/// The large-body runs (see the module doc).
pub fn body_runs(opts: &super::Opts, origin: &Origin, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<Value>, String> {
    let targets: Vec<&str> =
        TARGETS.iter().copied().filter(|t| *t == "direct" || wanted(t.split(' ').next().unwrap())).collect();
    let rounds = opts.rounds.max(1);
    let mut figures: Vec<((&str, &str), Vec<Figures>)> = Vec::new();
    for round in 1..=rounds {
        for (case, size, upload) in CASES {
            eprintln!("load: bodies, {case}, round {round} of {rounds}");
            let mut order = targets.clone();
            let shift = (round - 1) % order.len();
            order.rotate_left(shift);
            for target in order {
                let server = start(opts, origin, target)?;
                let url = server.as_ref().map_or(format!("http://{}/x", origin.plain), |s| s.url.clone());
                let f = measure(&url, server.as_ref(), size, upload, opts.duration)?;
                eprintln!(
                    "load:   {target:20} {:.0} MiB/s, {:.0} req/s, {} µs CPU/req, peak RSS {} KiB, {} errors",
                    f.0,
                    f.1,
                    f.2.map_or("-".into(), |c| format!("{c:.0}")),
                    f.3.map_or("-".into(), |k| k.to_string()),
                    f.4
                );
                match figures.iter_mut().find(|x| x.0 == (case, target)) {
                    Some(x) => x.1.push(f),
                    None => figures.push(((case, target), vec![f])),
                }
            }
        }
    }
    Ok(figures
        .into_iter()
        .map(|((case, target), f)| {
            let cpu: Vec<f64> = f.iter().filter_map(|x| x.2).collect();
            json!({
                "label": format!("{case}: {target}"), "case": case, "target": target,
                "mib_per_s": median(f.iter().map(|x| x.0).collect()),
                "rps": median(f.iter().map(|x| x.1).collect()),
                "cpu_us_per_request": (!cpu.is_empty()).then(|| median(cpu)),
                "peak_rss_mib": f.iter().filter_map(|x| x.3).max().map(|k| k as f64 / 1024.0),
                "errors": f.iter().map(|x| x.4).sum::<u64>(),
                "rounds": f.len(),
            })
        })
        .collect())
}

/// The large-body table.
pub fn print(rows: &[Value]) {
    println!("\n| concurrency 16 | MiB/s | req/s | CPU µs/req | peak RSS MiB | errors |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let f = |k: &str, d: usize| r[k].as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r["label"].as_str().unwrap_or_default(),
            f("mib_per_s", 0),
            f("rps", 1),
            f("cpu_us_per_request", 0),
            f("peak_rss_mib", 1),
            r["errors"]
        );
    }
}
