//! File tokens rotating under keep-alive traffic: rename-over and the Kubernetes `..data`
//! symlink swap, no failed request, no stale value after the swap, no new connection; a
//! broken file keeps the last good value; other files changing beside a token do not make it
//! read again; no value ever appears on the admin API.

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

/// Lays out a secret volume the way the kubelet does: `token -> ..data/token`,
/// `..data -> ..TIMESTAMP`, and swaps `..data` atomically to a new directory.
struct SecretVolume {
    dir: std::path::PathBuf,
    n: usize,
}

impl SecretVolume {
    fn new(dir: &Path, value: &str) -> SecretVolume {
        let mut v = SecretVolume { dir: dir.to_owned(), n: 0 };
        v.swap(value);
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        v
    }

    fn swap(&mut self, value: &str) {
        self.n += 1;
        let ts = format!("..2026_11_28_08_00_{:02}.{}", self.n, 1000 + self.n);
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("token"), value).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn config(up: &Upstream, path: &Path) -> String {
    format!(
        r#"{LISTEN}
[[routes]]
name = "r"
prefix = "/r"
upstream = "{url}"
token = "t"

[tokens.t]
source = "file"
path = {path:?}
"#,
        url = up.url,
        path = path.display().to_string()
    )
}

async fn rotate_under_load(kubernetes: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let values: Vec<String> = (0..6).map(|i| format!("rot{}_{i}_{}", kubernetes as u8, "x".repeat(i + 8))).collect();
    let mut volume = None;
    if kubernetes {
        volume = Some(SecretVolume::new(dir.path(), &values[0]));
    } else {
        write_rename(&path, &values[0]);
    }
    // A TLS upstream speaking HTTP/2 (as most real APIs do): one multiplexed pooled connection
    // serves every request, so any connection a rotation opened would show in the count.
    let ca = TestCa::new();
    let up = Upstream::tls(&ca).await;
    let text = config(&up, &path)
        .replace("token = \"t\"\n", &format!("token = \"t\"\nca_file = {:?}\n", ca.ca_file.display().to_string()));
    let sk = start_proxy(&text).await;
    let c = client();
    let url = format!("http://{}/r/x", sk.proxy_addr);
    let a = get(&c, &url).await;
    assert_eq!(a.status, 200);
    assert_eq!(up.last().headers["authorization"], format!("Bearer {}", values[0]).as_str());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = background_load(sk.proxy_addr, stop.clone(), ok.clone(), failed.clone());
    // Let the background client open its connection before counting.
    let load_started = ok.load(Ordering::SeqCst);
    bounded("the background client's first answer", async {
        while ok.load(Ordering::SeqCst) == load_started {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let connections = up.connection_count();

    for (generation, value) in values.iter().enumerate().skip(1) {
        match &mut volume {
            Some(v) => v.swap(value),
            None => write_rename(&path, value),
        }
        wait_generation(&sk, "t", generation as u64 + 1).await;
        // The very next request carries the new value (found by its path: background
        // requests that loaded the old value before the swap may arrive after it).
        let a = get(&c, &format!("{url}/after/{generation}")).await;
        assert_eq!(a.status, 200);
        let seen = up.find(&format!("/x/after/{generation}"));
        assert_eq!(seen.headers["authorization"], format!("Bearer {value}").as_str());
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during rotation");
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(up.connection_count(), connections, "a rotation opened a new upstream connection");
    assert_eq!(up.last().version, http::Version::HTTP_2);
    println!(
        "{} background requests and {} rotations over {connections} upstream connection(s)",
        ok.load(Ordering::SeqCst),
        values.len() - 1
    );

    // The admin API never shows a value, current or retired.
    let admin = format!("http://{}", sk.admin_addr);
    let mut outputs = Vec::new();
    for p in ["/tokens", "/", "/metrics", "/readyz", "/healthz"] {
        outputs.push(get(&c, &format!("{admin}{p}")).await.text());
    }
    outputs.push(post(&c, &format!("{admin}/tokens/t/refresh")).await.text());
    for out in &outputs {
        for v in &values {
            assert!(!out.contains(v.as_str()), "a token value appeared on the admin API");
        }
    }
    let tokens = get(&c, &format!("{admin}/tokens")).await.json();
    assert_eq!(tokens[0]["generation"], values.len());
    assert_eq!(tokens[0]["state"], "ready");
    assert!(tokens[0]["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(tokens[0]["fingerprint"].as_str().unwrap().len(), "sha256:".len() + 12);
    sk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_rotation_under_keep_alive_load() {
    rotate_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_volume_rotation_under_keep_alive_load() {
    rotate_under_load(true).await;
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    write_rename(&path, "good_value_123");
    let up = Upstream::plain().await;
    let sk = start_proxy(&config(&up, &path)).await;
    let c = client();
    let admin = format!("http://{}", sk.admin_addr);

    // Empty file: refused, the old value stays, the error is recorded.
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    std::fs::rename(dir.path().join("empty"), &path).unwrap();
    let r = post(&c, &format!("{admin}/tokens/t/refresh")).await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert_eq!(j["result"], "failed");
    assert_eq!(j["generation"], 1);
    assert!(j["last_error"].as_str().unwrap().contains("empty"), "{j}");
    assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer good_value_123");

    // Missing file: same.
    std::fs::remove_file(&path).unwrap();
    let r = post(&c, &format!("{admin}/tokens/t/refresh")).await;
    assert_eq!(r.json()["result"], "failed");
    assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer good_value_123");
    assert_eq!(get(&c, &format!("{admin}/readyz")).await.status, 200, "a kept value is still a usable one");

    // A value that cannot go in a header: refused too.
    std::fs::write(&path, "bad\u{7f}value").unwrap();
    let r = post(&c, &format!("{admin}/tokens/t/refresh")).await;
    assert_eq!(r.json()["result"], "failed");
    assert!(!r.text().contains("bad\u{7f}value"));

    // Fixed: picked up (by the watcher or this refresh), the error clears.
    write_rename(&path, "next_value_456");
    wait_generation(&sk, "t", 2).await;
    let j = get(&c, &format!("{admin}/tokens")).await.json();
    assert_eq!(j[0]["last_error"], serde_json::Value::Null);
    assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer next_value_456");
    sk.shutdown().await;
}

#[tokio::test]
async fn a_file_missing_at_start_is_loaded_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let up = Upstream::plain().await;
    let sk = start_proxy(&config(&up, &path)).await;
    let c = client();
    let a = get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["token"], "t");
    assert_eq!(get(&c, &format!("http://{}/readyz", sk.admin_addr)).await.status, 503);
    assert!(up.seen().is_empty());

    write_rename(&path, "arrived_later");
    wait_generation(&sk, "t", 1).await;
    assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer arrived_later");
    assert_eq!(get(&c, &format!("http://{}/readyz", sk.admin_addr)).await.status, 200);
    sk.shutdown().await;
}

#[tokio::test]
async fn the_periodic_check_covers_a_directory_that_cannot_be_watched_yet() {
    // The token's directory does not exist at start, so there is nothing to watch: the
    // periodic metadata check must find the file once it appears.
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("not-yet");
    let path = sub.join("token");
    let up = Upstream::plain().await;
    let sk = start_proxy(&config(&up, &path)).await;
    std::fs::create_dir(&sub).unwrap();
    write_rename(&path, "polled_value");
    wait_generation(&sk, "t", 1).await;
    let c = client();
    assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer polled_value");
    // And a later in-place rewrite is found the same way.
    std::fs::write(&path, "polled_value_2\n").unwrap();
    wait_generation(&sk, "t", 2).await;
    assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer polled_value_2");
    sk.shutdown().await;
}

/// Counts the opens of one file, as inotify reports them: sidekey's reads of a token file.
/// `IN_CLOSE_NOWRITE` is watched as well: the kernel merges an event into the one queued just
/// before it when the two are the same, so with opens alone two reads in a row can show as one
/// (CI saw the load at start and the watcher's first check as a single open); a close between
/// them keeps them apart.
struct Opens {
    events: inotify::EventStream<Vec<u8>>,
    name: std::ffi::OsString,
    seen: usize,
}

impl Opens {
    fn of(path: &Path) -> Opens {
        use inotify::{Inotify, WatchMask};
        let inotify = Inotify::init().unwrap();
        inotify.watches().add(path.parent().unwrap(), WatchMask::OPEN | WatchMask::CLOSE_NOWRITE).unwrap();
        let events = inotify.into_event_stream(vec![0u8; 4096]).unwrap();
        Opens { events, name: path.file_name().unwrap().to_owned(), seen: 0 }
    }

    /// The file's next open (unbounded: the callers bound it).
    async fn next(&mut self) {
        use futures_util::StreamExt;
        loop {
            let e = self.events.next().await.expect("the inotify stream ended").expect("reading inotify events");
            if e.mask.contains(inotify::EventMask::OPEN) && e.name.as_deref() == Some(self.name.as_os_str()) {
                return;
            }
        }
    }

    /// Waits (bounded) until the file has been opened `n` times in all.
    async fn wait(&mut self, n: usize) {
        while self.seen < n {
            bounded("an open of the token file", self.next()).await;
            self.seen += 1;
        }
    }
}

#[tokio::test]
async fn other_files_changing_beside_a_token_do_not_make_it_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    write_rename(&path, "steady_value_1");
    let mut opens = Opens::of(&path);
    let up = Upstream::plain().await;
    let sk = start_proxy(&config(&up, &path)).await;
    // The load at start, and the watcher's first check (which re-reads every token file once).
    opens.wait(2).await;

    // A log written beside the token, a writer's temporary file created and removed: the token
    // file is not read again for any of them.
    let log = dir.path().join("app.log");
    for i in 0..20 {
        std::fs::write(&log, format!("line {i}\n")).unwrap();
    }
    std::fs::write(dir.path().join("other.tmp"), "x").unwrap();
    std::fs::remove_file(dir.path().join("other.tmp")).unwrap();
    // No signal marks a read that does not happen: give one ample time (a change is read
    // within 15 ms, see SETTLE in proxy/token/file.rs).
    let again = tokio::time::timeout(std::time::Duration::from_secs(1), opens.next()).await;
    assert!(again.is_err(), "the token file was read again after changes to other files in its directory");

    // The token's own change still is.
    write_rename(&path, "steady_value_2");
    opens.wait(3).await;
    wait_generation(&sk, "t", 2).await;
    assert_eq!(get(&client(), &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["authorization"], "Bearer steady_value_2");
    sk.shutdown().await;
}
