//! A rehearsal of the Kubernetes pod in `examples/kubernetes/`: the manifests are read, the
//! ConfigMap's sidekey config, the container's args, env, ports, probes and mounts are taken
//! from them, the volumes are laid out the way the kubelet does (`..data` symlinks), and the
//! real binary runs as the pod would run it: probes answer at the manifest's paths, a Secret
//! update is picked up, the admin API wants the token the PodMonitor sends, SIGTERM ends it
//! within the pod's grace period. A manifest that drifts
//! from the binary (a port, a path, an env name, a key the config does not accept) fails here.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use support::servers::Oidc;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");

fn manifests(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_docs(&text, file)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// The kubelet's layout of a ConfigMap or Secret volume: files behind `..data`, swapped whole.
struct Volume {
    dir: PathBuf,
    n: usize,
}

impl Volume {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> Volume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = Volume { dir, n: 0 };
        v.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.dir.join(name)).unwrap();
        }
        v
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.n += 1;
        let ts = format!("..2026_11_28_10_00_{:02}.{}", self.n, 100 + self.n);
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        for (name, content) in files {
            std::fs::write(self.dir.join(&ts).join(name), content).unwrap();
        }
        std::os::unix::fs::symlink(&ts, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
    }
}

/// The port number a probe names (a number, or a container port's name).
fn probe_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")) as u16,
        other => panic!("bad probe port {other}"),
    }
}

fn parse_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

async fn rehearse(deployment_file: &str) {
    rehearse_docs(manifests(deployment_file)).await;
}

async fn rehearse_docs(deployment: Vec<Value>) {
    // The Deployment's own ConfigMap when its file has one, else configmap.yaml's.
    let config_map = if deployment.iter().any(|d| d["kind"] == "ConfigMap") {
        deployment.clone()
    } else {
        manifests("configmap.yaml")
    };
    let config_text = find(&config_map, "ConfigMap")["data"]["sidekey.toml"]
        .as_str()
        .expect("sidekey.toml in the ConfigMap")
        .to_owned();
    let pod = &find(&deployment, "Deployment")["spec"]["template"]["spec"];
    let sidekey = pod["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == "sidekey")
        .expect("a container named sidekey");
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    let args: Vec<String> =
        sidekey["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();

    // Static drift checks: what the pod wires must be what the config uses.
    let mut config: toml::Table = config_text.parse().expect("the ConfigMap's sidekey.toml is TOML");
    let admin: std::net::SocketAddr = config["listen"]["admin"].as_str().unwrap().parse().unwrap();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if !sidekey[probe].is_null() {
            assert_eq!(
                probe_port(sidekey, &sidekey[probe]["httpGet"]["port"]),
                admin.port(),
                "{probe} port vs [listen] admin"
            );
        }
    }
    assert!(!admin.ip().is_loopback(), "the kubelet probes the pod IP: the admin port cannot listen on loopback only");
    let mounts: Vec<(String, String)> = sidekey["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m["mountPath"].as_str().unwrap().to_owned()))
        .collect();
    let c_at = args.iter().position(|a| a == "-c" || a == "--config").expect("args name the config with -c");
    let config_path = &args[c_at + 1];
    let (config_volume, config_mount) = mounts
        .iter()
        .find(|(_, m)| config_path.starts_with(m.as_str()))
        .expect("the -c path is inside a mounted volume");
    let volume_of = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap().clone();
    assert!(!volume_of(config_volume)["configMap"].is_null(), "the config comes from the ConfigMap");
    let grace_cfg = sidekey::config::parse_duration(config["shutdown"]["grace"].as_str().unwrap()).unwrap();
    assert!(
        grace_cfg < grace,
        "[shutdown] grace {grace_cfg:?} must fit the pod's terminationGracePeriodSeconds {grace:?}"
    );
    let env_names: Vec<&str> = sidekey["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();

    // Lay out the volumes in a temp root, mapping every mountPath there.
    let root = tempfile::tempdir().unwrap();
    let local = |p: &str| -> String {
        let m = mounts
            .iter()
            .find(|(_, m)| p.starts_with(m.as_str()))
            .unwrap_or_else(|| panic!("{p} is on no volume mount of the container"));
        format!("{}{}", root.path().join(m.1.trim_start_matches('/')).display(), &p[m.1.len()..])
    };
    // emptyDir volumes start empty, and writable under the read-only root filesystem.
    for (name, mount) in &mounts {
        if !volume_of(name)["emptyDir"].is_null() {
            std::fs::create_dir_all(local(mount)).unwrap();
        }
    }
    let on_empty_dir = |path: &str, what: &str| {
        let (volume, _) = mounts.iter().find(|(_, m)| path.starts_with(m.as_str())).expect("on a mount");
        assert!(!volume_of(volume)["emptyDir"].is_null(), "{what} {path}: not on a writable (emptyDir) volume");
        volume.clone()
    };
    let mut audit_file = None;
    if let Some(audit) = config.get_mut("audit").and_then(|a| a.as_table_mut()) {
        let path = audit["path"].as_str().unwrap().to_owned();
        on_empty_dir(&path, "[audit] path");
        audit.insert("path".into(), local(&path).into());
        audit_file = Some(local(&path));
    }
    let mut ca_out = None;
    let proxy_cfg = config["listen"]["proxy"].as_str().unwrap().to_owned();
    if let Some(intercept) = config.get_mut("intercept").and_then(|i| i.as_table_mut()) {
        let path = intercept["ca_cert_out"].as_str().expect("the example writes its CA for the app").to_owned();
        let volume = on_empty_dir(&path, "[intercept] ca_cert_out");
        // The app mounts the same volume and trusts the certificate through its env.
        let app = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "app").expect("an app");
        let app_mount = app["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == volume.as_str()))
            .unwrap_or_else(|| panic!("the app does not mount {volume}"));
        assert_eq!(app_mount["readOnly"], true, "the app only reads the CA");
        let (_, sidekey_mount) = mounts.iter().find(|(n, _)| *n == volume).unwrap();
        let app_path = format!("{}{}", app_mount["mountPath"].as_str().unwrap(), &path[sidekey_mount.len()..]);
        let app_env = |name: &str| {
            app["env"].as_array().unwrap().iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str())
        };
        assert_eq!(app_env("SSL_CERT_FILE"), Some(app_path.as_str()), "the app's trust store is the written CA");
        let proxy: std::net::SocketAddr = proxy_cfg.parse().unwrap();
        assert_eq!(app_env("HTTPS_PROXY"), Some(format!("http://{proxy}").as_str()), "HTTPS_PROXY is sidekey's proxy");
        intercept.insert("ca_cert_out".into(), local(&path).into());
        ca_out = Some(local(&path));
    }
    // The IdP of the example is not reachable from a test: a real one stands in for it.
    let mut oidc = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let mut secret_files: Vec<(String, String)> = Vec::new();
    for (name, t) in config["tokens"].as_table_mut().unwrap().iter_mut() {
        let t = t.as_table_mut().unwrap();
        match t["source"].as_str().unwrap() {
            "file" => {
                let path = t["path"].as_str().unwrap().to_owned();
                let (volume, _) =
                    mounts.iter().find(|(_, m)| path.starts_with(m.as_str())).expect("token file on a mount");
                assert!(!volume_of(volume)["secret"].is_null(), "token {name}: its file comes from a Secret volume");
                secret_files.push((path.clone(), format!("rehearsal_{name}_1")));
                t.insert("path".into(), local(&path).into());
            }
            "oauth2" => {
                let var = t["client_secret"]["env"]
                    .as_str()
                    .expect("the example's client secret is an env reference")
                    .to_owned();
                assert!(env_names.contains(&var.as_str()), "token {name}: env {var} is not set on the container");
                let id = t["client_id"].as_str().unwrap().to_owned();
                let provider =
                    Oidc::start(&format!(r#"[{{"client_id":"{id}","client_secret":"rehearsal-secret"}}]"#), 60, 0);
                t.insert("token_url".into(), provider.token_url.clone().into());
                env.push((var, "rehearsal-secret".into()));
                oidc = Some(provider);
            }
            other => panic!("token {name}: the rehearsal does not know source {other}"),
        }
    }
    // The admin token: a file on a Secret volume, the Secret the PodMonitor sends from.
    let admin_token_path = config["admin"]["token"]["file"]
        .as_str()
        .expect("a non-loopback admin listener needs [admin] token = { file = .. }")
        .to_owned();
    let (admin_volume, admin_mount) =
        mounts.iter().find(|(_, m)| admin_token_path.starts_with(m.as_str())).expect("the admin token is on a mount");
    let admin_secret = volume_of(admin_volume)["secret"]["secretName"].as_str().expect("a Secret volume").to_owned();
    let admin_key = admin_token_path[admin_mount.len()..].trim_start_matches('/').to_owned();
    let pod_monitor = manifests("podmonitor.yaml");
    let credentials =
        &find(&pod_monitor, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"];
    assert_eq!(credentials["name"], admin_secret.as_str(), "the PodMonitor's admin token Secret");
    assert_eq!(credentials["key"], admin_key.as_str(), "the PodMonitor's admin token key");
    secret_files.push((admin_token_path.clone(), "rehearsal-admin-token\n".into()));
    config["admin"]["token"].as_table_mut().unwrap().insert("file".into(), local(&admin_token_path).into());

    // Ports: the manifest's are checked above; the rehearsal binds free ones.
    config["listen"].as_table_mut().unwrap().insert("proxy".into(), "127.0.0.1:0".into());
    config["listen"].as_table_mut().unwrap().insert("admin".into(), "127.0.0.1:0".into());
    let config_file = local(config_path);
    let config_dir = Path::new(&config_file).parent().unwrap().to_owned();
    let key = Path::new(config_path).strip_prefix(config_mount).unwrap().to_str().unwrap().to_owned();
    let _config_volume = Volume::new(config_dir, &[(&key, &toml::to_string(&config).unwrap())]);
    let mut secret_dirs: Vec<(PathBuf, String, Volume)> = Vec::new();
    for (path, value) in &secret_files {
        let local_path = PathBuf::from(local(path));
        let dir = local_path.parent().unwrap().to_owned();
        let file = local_path.file_name().unwrap().to_str().unwrap().to_owned();
        let vol = Volume::new(dir.clone(), &[(&file, value)]);
        secret_dirs.push((dir, file, vol));
    }

    // Run it the way the pod does.
    let mut run_args: Vec<String> = args.clone();
    run_args[c_at + 1] = config_file.clone();
    if !run_args.iter().any(|a| a == "--log-format") {
        run_args.extend(["--log-format".into(), "json".into()]);
    }
    let mut cmd = Command::new(BIN);
    cmd.args(&run_args).stdout(Stdio::null()).stderr(Stdio::piped()).env_remove("SIDEKEY_CONFIG");
    for e in sidekey["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), v);
        }
    }
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |needle: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    };
    let listening: Value = serde_json::from_str(&wait_line("sidekey listening")).unwrap();
    let admin_addr: std::net::SocketAddr = listening["admin"].as_str().unwrap().parse().unwrap();

    if let Some(ca) = &ca_out {
        let pem = std::fs::read_to_string(ca).expect("the CA certificate is written before sidekey listens");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
    let c = client();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if sidekey[probe].is_null() {
            continue;
        }
        let path = sidekey[probe]["httpGet"]["path"].as_str().unwrap();
        let a = get(&c, &format!("http://{admin_addr}{path}")).await;
        assert_eq!(a.status, 200, "{probe} {path}: {}", a.text());
    }
    // Prometheus' scrape: refused without the token, served with it.
    assert_eq!(get(&c, &format!("http://{admin_addr}/metrics")).await.status, 401);
    let scrape = send(
        &c,
        http::Request::get(format!("http://{admin_addr}/metrics"))
            .header("authorization", "Bearer rehearsal-admin-token")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(scrape.status, 200, "/metrics with the admin token");
    // The Secret is updated: the kubelet swaps ..data; sidekey picks it up.
    let (_, file, vol) = &mut secret_dirs[0];
    vol.update(&[(file, "rehearsal_rotated_2")]);
    let rotated = wait_line("token rotated");
    assert!(!rotated.contains("rehearsal_rotated_2"));

    // SIGTERM, as the kubelet sends it: a clean exit within the grace period.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + grace;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sidekey outlived the pod's terminationGracePeriodSeconds");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    if let Some(file) = &audit_file {
        let out = Command::new(BIN).args(["audit", "verify", file]).output().unwrap();
        assert!(out.status.success(), "the audit log on its volume: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(oidc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_sidecar_pod_runs_as_its_manifest_says() {
    rehearse("deployment-native-sidecar.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_sidecar_pod_runs_as_its_manifest_says() {
    rehearse("deployment-classic-sidecar.yaml").await;
}

/// The annotated app as `sidekey inject` makes it: the pod it describes must run as the
/// hand-written ones do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_pod_runs_as_its_manifest_says() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/deployment-annotated.yaml");
    let out = Command::new(BIN).arg("inject").arg("-f").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = parse_docs(&String::from_utf8(out.stdout).unwrap(), "sidekey inject's output");
    let pod = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "sidekey", "a native sidecar");
    rehearse_docs(docs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_proxy_pod_runs_as_its_manifest_says() {
    rehearse("deployment-https-proxy.yaml").await;
}
