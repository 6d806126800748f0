//! `[listen] workers = 2`: the proxy's connections are handed to two single-threaded runtimes
//! in turn and served there; a file token rotating under keep-alive load on both loses no
//! request and the next request after each swap carries the new value; shutdown stops the
//! workers.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

fn write_rename(path: &Path, value: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// How often the thread named `name` has gone to sleep (`voluntary_ctxt_switches`).
fn sleeps_of(name: &str) -> u64 {
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim() == name) {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no thread {name}")
}

/// `n` GETs of `path` one after another on one new keep-alive connection; each must be a 200.
async fn on_one_connection(proxy: std::net::SocketAddr, path: &str, n: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    for i in 0..n {
        s.write_all(format!("GET {path}/{i} HTTP/1.1\r\nHost: {proxy}\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        bounded("an answer", async {
            let mut buf = [0u8; 4096];
            while !response_complete(&answer) {
                let got = s.read(&mut buf).await.unwrap();
                assert!(got > 0, "the connection closed");
                answer.extend_from_slice(&buf[..got]);
            }
        })
        .await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_serve_in_turn_and_rotation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let values: Vec<String> = (0..5).map(|i| format!("w2_rotation_{i}_{}", "x".repeat(i + 8))).collect();
    write_rename(&path, &values[0]);
    let up = Upstream::plain().await;
    let config = format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\n\n\
         [[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"t\"\n\n\
         [tokens.t]\nsource = \"file\"\npath = {:?}\n",
        up.url,
        path.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let names = thread_names();
    for w in ["sidekey-w0", "sidekey-w1"] {
        assert!(names.iter().any(|n| n == w), "no thread {w}: {names:?}");
    }
    assert_eq!(sk.worker_connections(), Some(vec![0, 0]));

    // Four connections of one request each (a client per request: a connection each), in turn.
    for i in 0..4 {
        let a = get(&client(), &format!("http://{}/r/one/{i}", sk.proxy_addr)).await;
        assert_eq!(a.status, 200);
        assert_eq!(up.find(&format!("/one/{i}")).headers["authorization"], format!("Bearer {}", values[0]).as_str());
    }
    assert_eq!(sk.worker_connections(), Some(vec![2, 2]), "connections not handed out in turn");

    // Each worker serves its connection's requests itself: it waits for the upstream's answer
    // (goes to sleep) about once per request. (The other wakes too when the pooled upstream
    // connection was opened on it: its I/O driver watches that socket.)
    for w in 0..2 {
        let (me, other) = (format!("sidekey-w{w}"), format!("sidekey-w{}", 1 - w));
        let (mine, others) = (sleeps_of(&me), sleeps_of(&other));
        on_one_connection(sk.proxy_addr, &format!("/r/on/{w}"), 50).await;
        let (mine, others) = (sleeps_of(&me) - mine, sleeps_of(&other) - others);
        println!("50 requests on {me}: it slept {mine} times, {other} {others}");
        assert!(mine >= 25, "50 requests on {me}: it slept {mine} times, {other} {others}");
    }
    assert_eq!(sk.worker_connections(), Some(vec![3, 3]));

    // Keep-alive load on two connections (one on each worker), the token swapped under it.
    let before = sk.worker_connections().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for _ in 0..2 {
        background_load(sk.proxy_addr, stop.clone(), ok.clone(), failed.clone());
    }
    bounded("both load connections' first answers", async {
        while ok.load(Ordering::SeqCst) < 2 || sk.worker_connections().unwrap().iter().sum::<u64>() < 8 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let after = sk.worker_connections().unwrap();
    assert!(after[0] > before[0] && after[1] > before[1], "load not on both workers: {before:?} -> {after:?}");

    let c = client();
    for (generation, value) in values.iter().enumerate().skip(1) {
        write_rename(&path, value);
        wait_generation(&sk, "t", generation as u64 + 1).await;
        // Through each worker: the next connections go to one and then the other.
        for w in 0..2 {
            let a = get(&client(), &format!("http://{}/r/after/{generation}/{w}", sk.proxy_addr)).await;
            assert_eq!(a.status, 200);
            let seen = up.find(&format!("/after/{generation}/{w}"));
            assert_eq!(seen.headers["authorization"], format!("Bearer {value}").as_str());
        }
        let a = get(&c, &format!("http://{}/r/kept/{generation}", sk.proxy_addr)).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            up.find(&format!("/kept/{generation}")).headers["authorization"],
            format!("Bearer {value}").as_str()
        );
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during rotation");
    println!(
        "{} background requests over two workers, {:?} connections each",
        ok.load(Ordering::SeqCst),
        sk.worker_connections()
    );

    bounded("shutdown", sk.shutdown()).await;
    // Their runtimes are gone; the threads end right after.
    bounded("the worker threads to end", async {
        while thread_names().iter().any(|n| n.starts_with("sidekey-w")) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}
