//! Installing and operating sidekey (issue 33), through the real binary: the README's commands
//! from the repository root, what `check` catches before `run` would refuse, relative paths
//! taken from the config's directory, `sidekey health`, the audit anchor, the access log, log
//! colour, `required = false`, and the Unix-socket listener.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");

/// A running `sidekey` whose stderr is collected line by line.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("sidekey starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, rx }
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {WAIT:?}; log:\n{}", self.log()),
            }
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The admin address from the "sidekey listening" line (JSON or pretty).
    fn admin(&self) -> String {
        let line = self.wait_line("sidekey listening");
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(j) => j["admin"].as_str().unwrap().to_owned(),
            Err(_) => line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .unwrap_or_else(|| panic!("no admin= in {line:?}"))
                .to_owned(),
        }
    }

    fn terminate(&mut self) -> Option<i32> {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "sidekey did not exit within {WAIT:?}");
            // A child's exit has no awaitable signal in std; this polls a finished flag.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 GET: status and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The commands of README.md's "Running it" block that start with `sidekey `.
fn readme_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme.split("## Running it").nth(1).expect("a Running it section");
    let block = block.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    block
        .lines()
        .filter_map(|l| {
            let command = l.split('#').next().unwrap().trim();
            let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
            let at = words.iter().position(|w| w == "sidekey")?;
            // Leading VAR=value words are the command's environment: kept in front.
            Some(words).filter(|w| w[..at].iter().all(|w| w.contains('=')))
        })
        .collect()
}

/// The README's commands, run as printed from a copy of the repository root: `check` passes,
/// each `run` line starts and answers `/healthz` and `/readyz`. The copy's sample config has
/// only its listen ports set to 0 (the printed 8080 and 9901 may be taken on a test machine).
#[test]
fn the_readme_commands_work_as_printed_from_the_repository_root() {
    let commands = readme_commands();
    assert!(commands.len() >= 3, "{commands:?}");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("config")).unwrap();
    let sample = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidekey.toml")).unwrap();
    assert!(sample.contains("\"127.0.0.1:8080\"") && sample.contains("\"127.0.0.1:9901\""));
    let sample =
        sample.replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"").replace("\"127.0.0.1:9901\"", "\"127.0.0.1:0\"");
    std::fs::write(root.path().join("config/sidekey.toml"), sample).unwrap();
    let mut ran = 0;
    for line in commands {
        let at = line.iter().position(|w| w == "sidekey").unwrap();
        let words = &line[at..];
        let mut cmd = Command::new(BIN);
        cmd.args(&words[1..]).current_dir(root.path()).env_remove("SIDEKEY_CONFIG").env("CI_TOKEN", "ci-test-value");
        for var in &line[..at] {
            let (k, v) = var.split_once('=').unwrap();
            cmd.env(k, v);
        }
        match words[1].as_str() {
            "check" => {
                let (code, out, err) = run(&mut cmd);
                assert_eq!(code, 0, "{words:?}: {out}{err}");
            }
            "run" => {
                let mut p = Proc::spawn(&mut cmd);
                let admin = p.admin();
                assert_eq!(http_get(&admin, "/healthz").0, 200, "{words:?}");
                // The sample's GitHub token file is not on this machine: a warning, not a failure.
                assert!(p.log().contains("/var/run/secrets/github/token"), "{}", p.log());
                assert_eq!(p.terminate(), Some(0), "{words:?}: {}", p.log());
                ran += 1;
            }
            other => panic!("unexpected README command {other}"),
        }
    }
    assert!(ran >= 2, "both run lines ran");
    // The sample's audit log went next to the config (a relative path), not to /var/log.
    let audit = root.path().join("config/audit.log");
    let (code, out, err) = run(Command::new(BIN).args(["audit", "verify"]).arg(&audit));
    assert_eq!(code, 0, "{out}{err}");
}

/// A config of one file-token route, plus `extra` sections.
fn config_text(token_path: &str, extra: &str) -> String {
    format!(
        "{LISTEN}{extra}\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"http://127.0.0.1:9\"\ntoken = \"t\"\n\n\
         [tokens.t]\nsource = \"file\"\npath = {token_path:?}\n"
    )
}

/// `check` as an unprivileged user when the tests run as root (root reads whatever it likes).
fn check_as_user(config: &Path) -> (i32, String, String) {
    let mut cmd = if unsafe_is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    run(cmd.args(["check", "-c"]).arg(config))
}

fn unsafe_is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

fn open_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Writable by the unprivileged user `check` runs as (see check_as_user).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_exits_2_for_what_run_would_refuse_and_warns_for_a_token_file_still_to_come() {
    let dir = open_dir();
    let d = dir.path();
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        chmod(&p, 0o644);
        p
    };
    // A token file not there yet: a warning, exit 0, and nothing created.
    let c = write("missing.toml", &config_text("later/token", "[audit]\npath = \"audit.log\"\n"));
    let (code, out, err) = check_as_user(&c);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("tokens.t.path") && err.contains("does not exist yet"), "{err}");
    assert!(!d.join("audit.log").exists(), "check creates no audit log");

    // The audit log's directory does not exist: sidekey creates none.
    let c = write("nodir.toml", &config_text("token", "[audit]\npath = \"logs/audit.log\"\n"));
    let (code, _, err) = check_as_user(&c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("audit.path") && err.contains("sidekey creates no directories"), "{err}");
    assert!(err.contains("nodir.toml:5:"), "the line of the key: {err}");

    // The directory exists but may not be written to.
    std::fs::create_dir(d.join("ro")).unwrap();
    chmod(&d.join("ro"), 0o555);
    let c = write("rodir.toml", &config_text("token", "[audit]\npath = \"ro/audit.log\"\n"));
    let (code, _, err) = check_as_user(&c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("audit.path") && err.contains("ro"), "{err}");

    // An existing audit log that may not be appended to.
    let log = write("ro.log", "");
    chmod(&log, 0o444);
    let c = write("rolog.toml", &config_text("token", "[audit]\npath = \"ro.log\"\n"));
    let (code, _, err) = check_as_user(&c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot open audit log"), "{err}");

    // A token file that exists but cannot be read.
    let secret = write("token", "s3cret-never-printed");
    chmod(&secret, 0o600);
    let c = write("unreadable.toml", &config_text("token", ""));
    let (code, out, err) = check_as_user(&c);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("tokens.t.path") && err.contains("cannot read"), "{err}");
    assert!(!err.contains("s3cret") && !out.contains("s3cret"));

    // A CA file that cannot be read.
    let ca = write("ca.pem", "not even PEM");
    chmod(&ca, 0o600);
    chmod(&secret, 0o644);
    let c = write("ca.toml", &config_text("token", "[upstream]\nca_file = \"ca.pem\"\n"));
    let (code, _, err) = check_as_user(&c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("upstream.ca_file") && err.contains("cannot read CA file"), "{err}");

    // All readable, a writable directory: ok.
    chmod(&ca, 0o644);
    let c = write("good.toml", &config_text("token", "[audit]\npath = \"audit.log\"\n"));
    let (code, out, err) = check_as_user(&c);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!d.join("audit.log").exists());
}

/// Relative paths are taken from the config's directory as given, not from the working
/// directory and not from a symlink's target: a ConfigMap's file is a link into `..data`.
#[test]
fn relative_paths_are_taken_from_the_config_directory_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("..data")).unwrap();
    std::fs::write(d.join("ghtoken"), "relative-token-value\n").unwrap();
    std::fs::write(d.join("..data/sidekey.toml"), config_text("ghtoken", "[audit]\npath = \"audit.log\"\n")).unwrap();
    std::os::unix::fs::symlink("..data/sidekey.toml", d.join("sidekey.toml")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--log-format", "json", "-c"]).arg(d.join("sidekey.toml")).current_dir("/");
    let mut p = Proc::spawn(&mut cmd);
    let admin = p.admin();
    let (status, body) = http_get(&admin, "/readyz");
    assert_eq!(status, 200, "the token beside the link was read: {body}\n{}", p.log());
    assert_eq!(p.terminate(), Some(0));
    assert!(d.join("audit.log").exists(), "the audit log beside the link");
    assert!(!d.join("..data/audit.log").exists());
}

#[test]
fn ca_init_prints_paths_that_work_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(Command::new(BIN).args(["ca", "init", "--out", "ca"]).current_dir(dir.path()));
    assert_eq!(code, 0, "{err}");
    let cert = dir.path().join("ca/ca.crt");
    assert!(out.contains(&format!("ca_cert = {{ file = {:?} }}", cert.display().to_string())), "{out}");
    // The printed lines, pasted into a config elsewhere, load.
    let snippet = out.lines().skip_while(|l| *l != "[intercept]").collect::<Vec<_>>().join("\n");
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("c.toml");
    std::fs::write(&config, format!("{}\n{snippet}\n", config_text("/nonexistent/t", ""))).unwrap();
    let (code, out, err) = run(Command::new(BIN).args(["check", "-c"]).arg(&config).current_dir("/"));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn health_exits_0_when_ready_1_when_not_or_unreachable_2_on_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Bad arguments.
    assert_eq!(run(Command::new(BIN).args(["health", "--admin", "nonsense"])).0, 2);
    assert_eq!(run(Command::new(BIN).args(["health", "--bogus"])).0, 2);
    assert_eq!(run(Command::new(BIN).args(["health", "-c"]).arg(d.join("none.toml"))).0, 2);
    // Unreachable: a port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, err) = run(Command::new(BIN).args(["health", "--admin", &free.to_string()]));
    assert_eq!(code, 1, "{err}");

    std::fs::write(d.join("sidekey.toml"), config_text("token", "")).unwrap();
    let mut p = Proc::spawn(Command::new(BIN).args(["run", "--log-format", "json", "-c"]).arg(d.join("sidekey.toml")));
    let admin = p.admin();
    // Not ready: the token file is missing.
    let (code, _, err) = run(Command::new(BIN).args(["health", "--admin", &admin]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not ready (503)"), "{err}");
    std::fs::write(d.join("token"), "now-here").unwrap();
    let deadline = Instant::now() + WAIT;
    while http_get(&admin, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, _, err) = run(Command::new(BIN).args(["health", "--admin", &admin]));
    assert_eq!(code, 0, "{err}");
    // The address from the config's listen.admin, 0.0.0.0 taken as loopback.
    let port = admin.rsplit(':').next().unwrap();
    std::fs::write(
        d.join("probe.toml"),
        config_text("token", "").replace(
            "admin = \"127.0.0.1:0\"",
            &format!("admin = \"0.0.0.0:{port}\"\n[admin]\ntoken = {{ env = \"X\" }}"),
        ),
    )
    .unwrap();
    let (code, _, err) = run(Command::new(BIN).args(["health", "-c"]).arg(d.join("probe.toml")));
    assert_eq!(code, 0, "{err}");
    // As the image's HEALTHCHECK runs it: no arguments, the config from SIDEKEY_CONFIG.
    let (code, _, err) = run(Command::new(BIN).arg("health").env("SIDEKEY_CONFIG", d.join("probe.toml")));
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.terminate(), Some(0));
}

/// The chain head is logged at the anchor interval and at shutdown, served at `GET /audit`,
/// and `audit verify --head` fails on a file whose tail was cut off (the chain alone passes).
#[test]
fn the_audit_anchor_catches_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "anchored-1").unwrap();
    std::fs::write(
        d.join("sidekey.toml"),
        config_text("token", "[audit]\npath = \"audit.log\"\nanchor_interval = \"100ms\"\n"),
    )
    .unwrap();
    let mut p = Proc::spawn(Command::new(BIN).args(["run", "--log-format", "json", "-c"]).arg(d.join("sidekey.toml")));
    let admin = p.admin();
    let periodic = p.wait_line("\"audit chain head\"");
    let periodic: serde_json::Value = serde_json::from_str(&periodic).unwrap();
    assert!(periodic["seq"].as_u64().unwrap() >= 1, "{periodic}");
    std::fs::write(d.join("next"), "anchored-2").unwrap();
    std::fs::rename(d.join("next"), d.join("token")).unwrap();
    p.wait_line("rotated");
    let deadline = Instant::now() + WAIT;
    let head = loop {
        let (status, body) = http_get(&admin, "/audit");
        assert_eq!(status, 200, "{body}");
        let head: serde_json::Value = serde_json::from_str(&body).unwrap();
        if head["seq"].as_u64().unwrap() >= 2 {
            break head;
        }
        assert!(Instant::now() < deadline, "the rotation never reached the audit head: {body}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(head["hash"].as_str().unwrap().len(), 64);
    assert_eq!(p.terminate(), Some(0));
    let last: serde_json::Value = serde_json::from_str(&p.wait_line_in_log("audit chain head at shutdown")).unwrap();
    let anchor = format!("{}:{}", last["seq"], last["hash"].as_str().unwrap());
    let log = d.join("audit.log");
    let (code, out, err) = run(Command::new(BIN).args(["audit", "verify", "--head", &anchor]).arg(&log));
    assert_eq!(code, 0, "{out}{err}");
    // Cut the last line off: the chain alone is still intact, the anchor is not reached.
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(&log, kept[..kept.len() - 1].iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    assert_eq!(run(Command::new(BIN).args(["audit", "verify"]).arg(&log)).0, 0);
    let (code, _, err) = run(Command::new(BIN).args(["audit", "verify", "--head", &anchor]).arg(&log));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tail was cut off"), "{err}");
    assert_eq!(run(Command::new(BIN).args(["audit", "verify", "--head", "nonsense"]).arg(&log)).0, 2);

    // Without [audit]: 404.
    std::fs::write(d.join("plain.toml"), config_text("token", "")).unwrap();
    let mut p = Proc::spawn(Command::new(BIN).args(["run", "--log-format", "json", "-c"]).arg(d.join("plain.toml")));
    assert_eq!(http_get(&p.admin(), "/audit").0, 404);
    assert_eq!(p.terminate(), Some(0));
}

impl Proc {
    /// A line already logged (the process has exited), or one still to come.
    fn wait_line_in_log(&self, needle: &str) -> String {
        if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        self.wait_line(needle)
    }
}

/// `[log] access = true`: one info line per request with the contract's fields, and never the
/// query string or a header value; off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_request_without_its_query_or_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "access-token-value").unwrap();
    let up = Upstream::plain().await;
    let text = |extra: &str| config_text("token", extra).replace("http://127.0.0.1:9", &up.url);
    std::fs::write(d.join("on.toml"), text("[log]\naccess = true\n")).unwrap();
    std::fs::write(d.join("off.toml"), text("")).unwrap();
    for (file, on) in [("on.toml", true), ("off.toml", false)] {
        let mut p = Proc::spawn(Command::new(BIN).args(["run", "--log-format", "json", "-c"]).arg(d.join(file)));
        let line = p.wait_line("sidekey listening");
        let proxy = serde_json::from_str::<serde_json::Value>(&line).unwrap()["proxy"].as_str().unwrap().to_owned();
        let c = client();
        let req = http::Request::get(format!("http://{proxy}/r/items?api_key=query-secret-value"))
            .header("X-Custom", "header-secret-value")
            .body(http_body_util::Full::default())
            .unwrap();
        assert_eq!(send(&c, req).await.status, 200);
        assert_eq!(get(&c, &format!("http://{proxy}/nowhere")).await.status, 404);
        assert_eq!(p.terminate(), Some(0));
        let log = p.log();
        let access: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|j| j["message"] == "access")
            .collect();
        if !on {
            assert!(access.is_empty(), "off by default: {log}");
            continue;
        }
        assert_eq!(access.len(), 2, "{log}");
        let a = &access[0];
        assert_eq!(a["level"], "INFO");
        assert_eq!(a["method"], "GET");
        assert_eq!(a["route"], "r");
        assert_eq!(a["status"], 200);
        assert!(a["upstream_ms"].as_f64().is_some(), "{a}");
        assert!(a["bytes"].as_u64().is_some(), "{a}");
        assert_eq!(a["token"], "t");
        assert_eq!(a["generation"], 1);
        assert_eq!(access[1]["status"], 404);
        assert_eq!(access[1]["route"], "");
        for secret in ["query-secret-value", "header-secret-value", "access-token-value", "api_key"] {
            assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
        }
    }
}

/// Pretty logs carry no colour codes into a pipe; on a terminal (a pty from `script`) they do,
/// unless NO_COLOR is set.
#[test]
fn pretty_logs_colour_only_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    // `run` with its proxy port taken logs a tracing error ("cannot start") and exits 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!(
            "{}\n[listen]\nproxy = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:0\"\n",
            config_text("/none", "").replace(LISTEN, "")
        ),
    )
    .unwrap();
    let (code, _, err) = run(Command::new(BIN).args(["run", "-c"]).arg(&config));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot start") && !err.contains('\x1b'), "a pipe gets no escape codes: {err:?}");
    let script = |no_color: Option<&str>| {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &format!("{BIN} run -c {}", config.display()), "/dev/null"]).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        run(&mut cmd).1
    };
    let tty = script(None);
    assert!(tty.contains("cannot start") && tty.contains('\x1b'), "a terminal gets colour: {tty:?}");
    let plain = script(Some("1"));
    assert!(plain.contains("cannot start") && !plain.contains('\x1b'), "NO_COLOR: {plain:?}");
    drop(taken);
}

/// A first load that fails does not claim a last good value it does not have.
#[test]
fn a_failed_first_load_says_there_is_no_value_yet() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let text = config_text("/none", "").replace(
        "source = \"file\"\npath = \"/none\"",
        "source = \"exec\"\ncommand = [\"/bin/false\"]\nrefresh = \"1h\"",
    );
    std::fs::write(&config, text).unwrap();
    let mut p = Proc::spawn(Command::new(BIN).args(["run", "--log-format", "json", "-c"]).arg(&config));
    p.admin();
    let line = p.wait_line_in_log("token load failed; no value yet");
    assert!(line.contains("\"token\":\"t\""), "{line}");
    assert_eq!(p.terminate(), Some(0));
    assert!(!p.log().contains("keeping the last good value"), "{}", p.log());
}

/// `required = false`: the token is fetched and served, but `/readyz` does not wait for it.
#[tokio::test]
async fn readiness_does_not_wait_for_a_token_that_is_not_required() {
    let dir = tempfile::tempdir().unwrap();
    let needed = dir.path().join("needed");
    std::fs::write(&needed, "needed-value").unwrap();
    let optional = dir.path().join("optional");
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"{u}\"\ntoken = \"needed\"\n\
         [[routes]]\nname = \"b\"\nprefix = \"/b\"\nupstream = \"{u}\"\ntoken = \"optional\"\n\
         [tokens.needed]\nsource = \"file\"\npath = {n:?}\n\
         [tokens.optional]\nsource = \"file\"\npath = {o:?}\nrequired = false\n",
        u = up.url,
        n = needed.display().to_string(),
        o = optional.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let ready = get(&c, &format!("http://{}/readyz", sk.admin_addr)).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(get(&c, &format!("http://{}/b/x", sk.proxy_addr)).await.status, 503, "no value yet");
    std::fs::write(&optional, "optional-value").unwrap();
    wait_generation(&sk, "optional", 1).await;
    assert_eq!(get(&c, &format!("http://{}/b/x", sk.proxy_addr)).await.status, 200, "fetched and served");
    assert_eq!(up.last().headers["authorization"], "Bearer optional-value");
    // A required token still holds readiness back.
    std::fs::remove_file(&needed).unwrap();
    sk.shutdown().await;
    let sk = start_proxy(&config).await;
    let ready = get(&c, &format!("http://{}/readyz", sk.admin_addr)).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["not_ready"], serde_json::json!(["needed"]), "only the required one");
    sk.shutdown().await;
}

/// `listen.proxy = "unix:..."`: requests over the socket, its mode, a stale file replaced, the
/// file removed at shutdown.
#[tokio::test]
async fn the_proxy_listens_on_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "unix-value").unwrap();
    let socket = dir.path().join("proxy.sock");
    // A stale socket file, as a sidekey killed with SIGKILL leaves.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let up = Upstream::plain().await;
    let config = format!(
        "[listen]\nproxy = \"unix:{s}\"\nadmin = \"127.0.0.1:0\"\nsocket_mode = \"0600\"\n\
         [[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"{u}\"\ntoken = \"t\"\n\
         [tokens.t]\nsource = \"file\"\npath = {t:?}\n",
        s = socket.display(),
        u = up.url,
        t = token.display().to_string()
    );
    let sk = start_proxy(&config).await;
    assert_eq!(sk.proxy_socket.as_deref(), Some(socket.as_path()));
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    for _ in 0..2 {
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        s.write_all(b"GET /r/over-unix HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        bounded("an answer over the socket", s.read_to_string(&mut out)).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    assert_eq!(up.find("/over-unix").headers["authorization"], "Bearer unix-value");
    // A second sidekey on the same path is refused, the first one's socket untouched.
    let second = sidekey::start(sidekey::Config::parse(&config).unwrap()).await;
    let e = second.err().expect("refused").to_string();
    assert!(e.contains("another process is listening"), "{e}");
    sk.shutdown().await;
    assert!(!socket.exists(), "removed at shutdown");
    // Bad modes are config errors with their key.
    let bad = config.replace("\"0600\"", "\"0999\"");
    let e = sidekey::Config::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("listen.socket_mode"), "{e}");
}

#[test]
fn the_network_policy_names_the_admin_port_by_number_and_the_license_is_there() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy = std::fs::read_to_string(root.join("examples/kubernetes/networkpolicy.yaml")).unwrap();
    let ports: Vec<&str> = policy.lines().filter_map(|l| l.trim().strip_prefix("- port:")).map(str::trim).collect();
    assert!(ports.contains(&"9901"), "{ports:?}");
    assert!(!ports.contains(&"admin"), "a named port some plugins do not resolve: {ports:?}");
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"), "the full text");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""));
}

/// The image's HEALTHCHECK is `sidekey health` (run with no shell), and the dependencies are
/// built in a layer before sidekey's own sources are copied in. (checkov's CKV_DOCKER_2, no
/// longer skipped, also wants the HEALTHCHECK: tests/lint.rs.)
#[test]
fn the_dockerfile_checks_health_with_sidekey_and_caches_its_dependencies() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let health = text.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect::<String>();
    assert!(health.contains(r#"CMD ["/usr/local/bin/sidekey", "health"]"#), "{health}");
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle:?} in the Dockerfile"));
    let deps = at("cargo build --release --locked --bin sidekey");
    assert!(deps < at("COPY proxy ./proxy"), "dependencies are built before the sources are copied");
    assert!(text[deps..].contains("target/release/.fingerprint/sidekey-*"), "the placeholder build is forgotten");
    assert!(text.contains("imagetools inspect"), "how to pin and bump the base images");
    let checkov = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".checkov.yaml")).unwrap();
    assert!(!checkov.contains("CKV_DOCKER_2"), "the HEALTHCHECK check is not skipped");
}
