//! `--scaling`: one worker against two, for sidekey and nginx, at concurrency 256.
//!
//! On a machine of few CPUs the load generator shares them with the proxy, so the figures
//! that mean something are each proxy's ratio of two workers to one, not the absolute ones.
//! Nothing is pinned to one CPU here: wrk (2 threads), the origin (2 threads) and the proxy
//! all run on the CPUs `taskset -c 0,1` gives them. Per round, in turn:
//! - sidekey `[listen] workers = 1` and `= 2` (thread-per-core: single-threaded runtimes);
//! - sidekey without `workers` (its default runtime: a thread per CPU it may run on), started
//!   on one CPU (`taskset -c 1`: a current-thread runtime) and on two;
//! - nginx `worker_processes 1` and `2`.
//!
//! Each: a 1 s warm-up, then wrk at concurrency 256 for `--duration`: requests/s and the
//! proxy's CPU time per request. Then a rotation run (`--rotate`, 100 ms unless given) with
//! sidekey at 2 workers: errors and stale tokens at the origin, as `--rotate` reports them.

use std::time::Duration;

use serde_json::{json, Value};

use super::{median, Server, CPU_LIST};

/// What to start for one scaling row.
#[derive(Clone, Copy)]
enum Variant {
    Workers(usize),
    /// sidekey's default runtime, on this many CPUs.
    Default(usize),
    Nginx(usize),
}

impl Variant {
    fn row(self) -> &'static str {
        match self {
            Variant::Workers(_) => "sidekey workers",
            Variant::Default(_) => "sidekey default runtime",
            Variant::Nginx(_) => "nginx worker_processes",
        }
    }

    fn n(self) -> usize {
        match self {
            Variant::Workers(n) | Variant::Default(n) | Variant::Nginx(n) => n,
        }
    }
}

/// Runs `f` with [`CPU_LIST`] set to `list`.
fn on_cpus<T>(list: &'static str, f: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            *CPU_LIST.lock().unwrap() = None;
        }
    }
    *CPU_LIST.lock().unwrap() = Some(list);
    let _restore = Restore;
    f()
}

fn start(opts: &super::Opts, origin: &super::Origin, v: Variant) -> Result<Server, String> {
    let both = if super::cpus() >= 2 { "0,1" } else { "0" };
    match v {
        Variant::Workers(n) => on_cpus(both, || {
            let run = super::Run { workers: Some(n), ..super::Run::default() };
            super::start_sidekey(origin, "sidekey", &opts.sidekey, run)
        }),
        Variant::Default(cpus) => on_cpus(if cpus == 1 { "1" } else { both }, || {
            super::start_sidekey(origin, "sidekey", &opts.sidekey, super::Run::default())
        }),
        Variant::Nginx(n) => on_cpus(both, || {
            super::start_nginx_with(origin, super::NginxOpts { workers: n, ..super::NginxOpts::default() })
        }),
    }
}

/// One measurement: (requests/s, CPU µs per request, errors).
fn measure(server: &Server, secs: u64) -> Result<(f64, f64, u64), String> {
    let both = if super::cpus() >= 2 { "0,1" } else { "0" };
    on_cpus(both, || {
        super::wrk_with(&server.url, 2, 256, 1, None)?;
        let before = server.cpu_us().0;
        let load = super::wrk_with(&server.url, 2, 256, secs, None)?;
        let cpu = (server.cpu_us().0 - before) as f64 / load.requests.max(1) as f64;
        Ok((load.requests as f64 / load.duration_s, cpu, load.errors))
    })
}

/// The scaling runs (see the module doc) and the rotation run at 2 workers.
pub fn scaling_runs(opts: &super::Opts, wanted: &dyn Fn(&str) -> bool) -> Result<(Vec<Value>, Value), String> {
    let origin = on_cpus(if super::cpus() >= 2 { "0,1" } else { "0" }, || super::start_origin_with(false, 2))?;
    let mut variants = Vec::new();
    if wanted("sidekey") {
        variants.extend([Variant::Workers(1), Variant::Workers(2), Variant::Default(1), Variant::Default(2)]);
    }
    if wanted("nginx") {
        variants.extend([Variant::Nginx(1), Variant::Nginx(2)]);
    }
    let servers: Vec<(Variant, Server)> =
        variants.iter().map(|&v| start(opts, &origin, v).map(|s| (v, s))).collect::<Result<_, _>>()?;
    let rounds = opts.rounds.max(1);
    // Per variant: (req/s, CPU per request, errors) per round.
    let mut figures: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); servers.len()];
    for round in 1..=rounds {
        eprintln!("load: scaling, round {round} of {rounds}");
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.rotate_left((round - 1) % servers.len().max(1));
        for i in order {
            let (v, server) = &servers[i];
            let f = measure(server, opts.duration)?;
            eprintln!("load:   {} {}: c256 {:.0} req/s, {:.1} µs CPU/req, {} errors", v.row(), v.n(), f.0, f.1, f.2);
            figures[i].push(f);
        }
    }
    let mut rows = Vec::new();
    for row in ["sidekey workers", "sidekey default runtime", "nginx worker_processes"] {
        let at = |n: usize| {
            servers.iter().position(|(v, _)| v.row() == row && v.n() == n).map(|i| {
                let f = &figures[i];
                let rps = median(f.iter().map(|x| x.0).collect());
                let cpu = median(f.iter().map(|x| x.1).collect());
                (rps, cpu, f.iter().map(|x| x.2).sum::<u64>())
            })
        };
        let (Some(one), Some(two)) = (at(1), at(2)) else { continue };
        rows.push(json!({
            "target": row, "rps_1": one.0, "rps_2": two.0, "rps_scaling": two.0 / one.0,
            "cpu_us_per_request_1": one.1, "cpu_us_per_request_2": two.1, "cpu_ratio": two.1 / one.1,
            "errors": one.2 + two.2, "rounds": rounds,
        }));
    }
    drop(servers);
    let rotation = if wanted("sidekey") {
        let server = start(opts, &origin, Variant::Workers(2))?;
        let every = opts.rotate.unwrap_or(Duration::from_millis(100));
        let both = if super::cpus() >= 2 { "0,1" } else { "0" };
        let r =
            on_cpus(both, || super::rotation_runs(std::slice::from_ref(&server), origin.plain, every, opts.duration))?;
        r.into_iter().next().map(|mut r| {
            r["target"] = json!("sidekey workers = 2");
            r
        })
    } else {
        None
    };
    Ok((rows, rotation.unwrap_or(Value::Null)))
}

/// The scaling table.
pub fn print(rows: &[Value], rotation: &Value) {
    println!("\n| concurrency 256, nothing pinned | 1 worker req/s | 2 workers req/s | x | CPU µs/req 1 | CPU µs/req 2 | x | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let f = |k: &str, d: usize| r[k].as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r["target"].as_str().unwrap_or_default(),
            f("rps_1", 0),
            f("rps_2", 0),
            f("rps_scaling", 2),
            f("cpu_us_per_request_1", 1),
            f("cpu_us_per_request_2", 1),
            f("cpu_ratio", 2),
            r["errors"]
        );
    }
    if rotation.is_object() {
        println!(
            "\nrotation under load, sidekey workers = 2: {} errors, {} stale at the origin, {} of {} changes seen, new token at \
             the origin after a change {:.1} / {:.1} ms (median / max)",
            rotation["errors"],
            rotation["stale"],
            rotation["changes_seen_at_origin"],
            rotation["changes"],
            rotation["delay_ms_median"].as_f64().unwrap_or(f64::NAN),
            rotation["delay_ms_max"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
