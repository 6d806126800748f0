//! The admin dashboard rendered by a real browser (Debian's headless Chromium): the tokens and
//! routes are on the page, with fingerprints and never a value; a screenshot goes to the
//! test output directory.

mod support;

use std::process::Command;

use support::*;

fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.to_owned();
        }
    }
    panic!("no headless Chromium found: run tests/servers/install.sh (it installs Debian's chromium)");
}

fn browse(browser: &str, profile: &std::path::Path, extra: &[&str], url: &str) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_tokens_and_routes_in_a_real_browser() {
    let browser = chromium();
    std::env::set_var("SK_DASH_GH", "ghp_DashboardSecret0001");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ci"), "ci_DashboardSecret0002").unwrap();
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}\n[[routes]]\nname = \"github\"\nprefix = \"/github\"\nupstream = \"{u}\"\ntoken = \"gh\"\n\n\
         [[routes]]\nname = \"ci\"\nprefix = \"/ci\"\nhost = \"ci.example\"\nupstream = \"{u}\"\ntoken = \"ci\"\n\n\
         [tokens.gh]\nsource = \"env\"\nvar = \"SK_DASH_GH\"\n\n[tokens.ci]\nsource = \"file\"\npath = {:?}\n",
        dir.path().join("ci").display().to_string(),
        u = up.url
    );
    let sk = start_proxy(&config).await;
    let c = client();
    for _ in 0..3 {
        get(&c, &format!("http://{}/github/x", sk.proxy_addr)).await;
    }
    get(&c, &format!("http://{}/ci/status/401", sk.proxy_addr)).await;
    let url = format!("http://{}/", sk.admin_addr);
    let profile = tempfile::tempdir().unwrap();

    let browser2 = browser.clone();
    let (url2, profile2) = (url.clone(), profile.path().to_owned());
    let dom = tokio::task::spawn_blocking(move || browse(&browser2, &profile2, &["--dump-dom"], &url2)).await.unwrap();
    assert!(dom.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let tokens = get(&c, &format!("http://{}/tokens", sk.admin_addr)).await.json();
    for t in tokens.as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        assert!(dom.contains(&format!("data-token=\"{name}\"")), "token {name} is not on the page:\n{dom}");
        assert!(dom.contains(t["fingerprint"].as_str().unwrap()), "fingerprint of {name} missing");
    }
    assert!(dom.contains("class=\"state-ready\""), "{dom}");
    assert!(dom.contains("data-route=\"github\"") && dom.contains("data-route=\"ci\""), "{dom}");
    assert!(dom.contains(">ready<"), "the readiness badge");
    assert!(!dom.contains("DashboardSecret"), "a token value reached the dashboard");

    let shot_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let profile3 = profile.path().to_owned();
    let out = tokio::task::spawn_blocking(move || browse(&browser, &profile3, &[&arg, "--window-size=1400,600"], &url))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a real screenshot");
    println!("dashboard screenshot: {}", shot.display());
    sk.shutdown().await;
}
