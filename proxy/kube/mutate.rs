//! The one mutation `sidekey inject` and the admission webhook share: sidekey added to every
//! pod template annotated `sidekey.dev/inject: "true"`, configured by its `sidekey.dev/*`
//! annotations (docs/kubernetes.md lists them).
//!
//! A template is left alone when it is not annotated, annotated `"false"`, or already has a
//! container named `sidekey`; so a mutated object mutated again comes back unchanged.

use super::node::{Map, Node};
use super::yaml;

/// The audit log's directory in the sidecar: an emptyDir.
const AUDIT_DIR: &str = "/var/log/sidekey";
/// Where no `sidekey.dev/image` annotation or `--image` names one: the name the examples use
/// for the image built from this repository's Dockerfile.
pub const DEFAULT_IMAGE: &str = concat!("registry.example.com/sidekey:", env!("CARGO_PKG_VERSION"));
/// The sidecar's container name, also how an injected template is recognised.
pub const CONTAINER: &str = "sidekey";
/// The admin listener the sidecar's config must use (`[listen] admin = "0.0.0.0:9901"`).
pub const ADMIN_PORT: u16 = 9901;
/// The proxy listener the sidecar's config must use for `sidekey.dev/https-proxy`.
pub const PROXY_URL: &str = "http://127.0.0.1:8080";
pub const CONFIG_DIR: &str = "/etc/sidekey";
pub const ADMIN_TOKEN_DIR: &str = "/var/run/secrets/sidekey/admin";
pub const CA_DIR: &str = "/var/run/sidekey/ca";

const PREFIX: &str = "sidekey.dev/";
const KNOWN: &[&str] = &[
    "inject",
    "config",
    "image",
    "cpu",
    "memory",
    "scrape",
    "admin-token-secret",
    "https-proxy",
    "secret-mounts",
    "secret-env",
];

/// The container, before its image, resources and extra mounts are filled in. Mirrors the
/// hand-written examples/kubernetes/deployment-native-sidecar.yaml.
const SIDECAR: &str = r#"
name: sidekey
image: IMAGE
imagePullPolicy: Always
restartPolicy: Always
args: [run, -c, /etc/sidekey/sidekey.toml, --watch-config, --log-format, json]
env:
  - name: RUST_LOG
    value: info
ports:
  - name: sidekey-admin
    containerPort: 9901
    protocol: TCP
startupProbe:
  httpGet:
    path: /readyz
    port: sidekey-admin
  periodSeconds: 1
  failureThreshold: 30
readinessProbe:
  httpGet:
    path: /readyz
    port: sidekey-admin
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: sidekey-admin
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
resources:
  requests:
    cpu: 50m
    memory: 32Mi
  limits:
    cpu: 500m
    memory: 128Mi
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  privileged: false
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
volumeMounts:
  - name: sidekey-config
    mountPath: /etc/sidekey
    readOnly: true
"#;

/// How to inject, from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--image`: used when a template has no `sidekey.dev/image`.
    pub image: Option<String>,
    /// `--classic`: a regular container rather than a native sidecar.
    pub classic: bool,
}

/// A template that could not be injected: the workload it belongs to, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct MutateError {
    pub workload: String,
    pub message: String,
}

impl std::fmt::Display for MutateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.workload, self.message)
    }
}

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected(String),
    AlreadyInjected(String),
}

/// Injects into every annotated pod template of `object` (a workload, a Pod, or a List of
/// them). On an error `object` may be half changed: callers keep their own copy.
pub fn mutate(object: &mut Node, opts: &Options) -> Result<Vec<Outcome>, MutateError> {
    let mut outcomes = Vec::new();
    walk(object, opts, &mut outcomes, 0)?;
    Ok(outcomes)
}

fn walk(object: &mut Node, opts: &Options, out: &mut Vec<Outcome>, depth: usize) -> Result<(), MutateError> {
    let Some(obj) = object.as_map_mut() else { return Ok(()) };
    let kind = obj.str("kind").unwrap_or_default().to_owned();
    let workload = describe(obj, &kind);
    if kind.ends_with("List") && depth < 4 {
        if let Some(Node::Seq(items)) = obj.get_mut("items") {
            for item in items {
                walk(item, opts, out, depth + 1)?;
            }
        }
        return Ok(());
    }
    let path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" | "PodTemplate" => {
            &["spec", "template"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    // On the workload's own metadata the annotation would do nothing: say so rather than
    // leave the pods without their sidecar.
    let own = obj.get("metadata").and_then(Node::as_map).and_then(|m| m.get("annotations")).and_then(Node::as_map);
    let misplaced = !path.is_empty() && own.is_some_and(|a| a.0.iter().any(|(k, _)| k.starts_with(PREFIX)));
    let mut template = Some(obj);
    for key in path {
        template = template.and_then(|m| m.get_mut(key)).and_then(Node::as_map_mut);
    }
    let Some(template) = template else { return Ok(()) };
    let annotated = template
        .get("metadata")
        .and_then(Node::as_map)
        .and_then(|m| m.get("annotations"))
        .and_then(Node::as_map)
        .is_some_and(|a| a.get("sidekey.dev/inject").is_some());
    if misplaced && !annotated {
        return Err(MutateError {
            workload,
            message: format!(
                "{PREFIX}* annotations belong on the pod template ({}.metadata.annotations), not on the {kind} itself",
                path.join(".")
            ),
        });
    }
    let job = matches!(kind.as_str(), "Job" | "CronJob");
    if let Some(o) = inject_template(template, opts, &workload, job)? {
        out.push(o);
    }
    Ok(())
}

/// `Deployment my-app`, `Pod my-ns/my-app-*` (a Pod named by generateName).
fn describe(obj: &Map, kind: &str) -> String {
    let meta = obj.get("metadata").and_then(Node::as_map);
    let name = match meta.and_then(|m| m.str("name")) {
        Some(n) => n.to_owned(),
        None => meta.and_then(|m| m.str("generateName")).map_or("(unnamed)".into(), |g| format!("{g}*")),
    };
    match meta.and_then(|m| m.str("namespace")) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The annotations that configure an injection, checked.
struct Settings {
    config: String,
    image: String,
    cpu: Option<String>,
    memory: Option<String>,
    scrape: bool,
    admin_token_secret: Option<String>,
    https_proxy: bool,
    secret_mounts: Vec<(String, String)>,
    secret_env: Vec<(String, String, String)>,
}

fn inject_template(
    template: &mut Map,
    opts: &Options,
    workload: &str,
    job: bool,
) -> Result<Option<Outcome>, MutateError> {
    let fail = |message: String| MutateError { workload: workload.to_owned(), message };
    let annotations: Vec<(String, Node)> = template
        .get("metadata")
        .and_then(Node::as_map)
        .and_then(|m| m.get("annotations"))
        .and_then(Node::as_map)
        .map(|a| a.0.clone())
        .unwrap_or_default();
    let ours: Vec<(&str, &Node)> =
        annotations.iter().filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k, v))).collect();
    match ours.iter().find(|(k, _)| *k == "inject").map(|(_, v)| v.as_str()) {
        None | Some(Some("false")) => return Ok(None),
        Some(Some("true")) => {}
        Some(_) => return Err(fail(format!("{PREFIX}inject must be \"true\" or \"false\""))),
    }
    let spec = template.map_mut("spec").ok_or_else(|| fail("the pod template's spec is not a mapping".into()))?;
    let has_sidecar = ["initContainers", "containers"].iter().any(|list| {
        matches!(spec.get(list), Some(Node::Seq(cs)) if cs.iter().any(|c| c.as_map().and_then(|m| m.str("name")) == Some(CONTAINER)))
    });
    if has_sidecar {
        return Ok(Some(Outcome::AlreadyInjected(workload.to_owned())));
    }
    let settings = settings(&ours, opts).map_err(fail)?;
    if job && opts.classic {
        return Err(fail("a classic sidecar never exits, so the Job's pod would never complete; inject the native sidecar (Kubernetes 1.29+)".into()));
    }
    apply(template, &settings, opts.classic).map_err(fail)?;
    Ok(Some(Outcome::Injected(workload.to_owned())))
}

fn settings(ours: &[(&str, &Node)], opts: &Options) -> Result<Settings, String> {
    let mut get = std::collections::HashMap::new();
    for (key, value) in ours {
        if !KNOWN.contains(key) {
            return Err(format!("unknown annotation {PREFIX}{key} (known: {})", KNOWN.join(", ")));
        }
        let Some(text) = value.as_str() else {
            return Err(format!("{PREFIX}{key} must be a string (quote it)"));
        };
        get.insert(*key, text.trim());
    }
    let flag = |key: &str| match get.get(key).copied() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(format!("{PREFIX}{key} must be \"true\" or \"false\"")),
    };
    let config = match get.get("config") {
        Some(name) => dns_name(name, "config")?,
        None => {
            return Err(format!(
                "{PREFIX}config is missing: name the ConfigMap that holds sidekey.toml (mounted at {CONFIG_DIR})"
            ))
        }
    };
    let image = match get.get("image").copied().or(opts.image.as_deref()) {
        Some(i) if !i.is_empty() && !i.chars().any(|c| c.is_whitespace() || c.is_control()) => i.to_owned(),
        Some(_) => return Err(format!("{PREFIX}image (or --image) is not an image reference")),
        None => DEFAULT_IMAGE.to_owned(),
    };
    let quantity = |key: &str| -> Result<Option<String>, String> {
        match get.get(key) {
            Some(q) if is_quantity(q) => Ok(Some((*q).to_owned())),
            Some(q) => Err(format!("{PREFIX}{key}: {q:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)")),
            None => Ok(None),
        }
    };
    let scrape = match get.get("scrape").copied() {
        None => false,
        Some("annotations") => true,
        Some(other) => return Err(format!("{PREFIX}scrape: {other:?}: the one value is \"annotations\"")),
    };
    let admin_token_secret = get.get("admin-token-secret").map(|n| dns_name(n, "admin-token-secret")).transpose()?;
    let mut secret_mounts: Vec<(String, String)> = Vec::new();
    for item in list(get.get("secret-mounts").copied()) {
        let (secret, path) =
            item.split_once('=').ok_or_else(|| format!("{PREFIX}secret-mounts: {item:?} is not SECRET=/mount/path"))?;
        let secret = dns_name(secret.trim(), "secret-mounts")?;
        let path = path.trim();
        let taken = [CONFIG_DIR, ADMIN_TOKEN_DIR, CA_DIR]
            .into_iter()
            .chain(secret_mounts.iter().map(|(_, p)| p.as_str()))
            .any(|p| inside(path, p) || inside(p, path));
        if !path.starts_with('/') || path.split('/').any(|s| s == ".." || s == ".") || path.len() > 1024 || taken {
            return Err(format!(
                "{PREFIX}secret-mounts: {path:?} is not an absolute path apart from sidekey's other mounts"
            ));
        }
        secret_mounts.push((secret, path.to_owned()));
    }
    let mut secret_env: Vec<(String, String, String)> = Vec::new();
    for item in list(get.get("secret-env").copied()) {
        let bad = || format!("{PREFIX}secret-env: {item:?} is not VAR=secret/key");
        let (var, reference) = item.split_once('=').ok_or_else(bad)?;
        let (secret, key) = reference.trim().split_once('/').ok_or_else(bad)?;
        let var = var.trim();
        let var_ok = var.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let key_ok =
            !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !var_ok || !key_ok || var == "RUST_LOG" || secret_env.iter().any(|(v, _, _)| v == var) {
            return Err(bad());
        }
        secret_env.push((var.to_owned(), dns_name(secret, "secret-env")?, key.to_owned()));
    }
    Ok(Settings {
        config,
        image,
        cpu: quantity("cpu")?,
        memory: quantity("memory")?,
        scrape,
        admin_token_secret,
        https_proxy: flag("https-proxy")?,
        secret_mounts,
        secret_env,
    })
}

fn list(value: Option<&str>) -> impl Iterator<Item = &str> {
    value.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn inside(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// A ConfigMap or Secret name (an RFC 1123 subdomain).
fn dns_name(name: &str, key: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!("{PREFIX}{key}: {name:?} is not a valid object name (lowercase letters, digits, '-', '.')"))
    }
}

/// A Kubernetes resource quantity: a decimal number and a suffix (`m`, `k`, `Mi`, `e3`...).
fn is_quantity(q: &str) -> bool {
    let digits_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok =
        matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
            || suffix
                .strip_prefix(['e', 'E'])
                .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
                .is_some_and(|e| !e.is_empty() && e.len() <= 3 && e.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok && q.len() <= 32
}

fn sidecar() -> Map {
    let chunk = yaml::Chunk { text: SIDECAR, line: 1 };
    match yaml::parse(&chunk) {
        Ok(Some(Node::Map(m))) => m,
        other => unreachable!("the sidecar template is a mapping: {other:?}"),
    }
}

fn map(entries: &[(&str, Node)]) -> Node {
    Node::Map(Map(entries.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()))
}

fn mount(name: &str, path: &str, read_only: bool) -> Node {
    let mut m = vec![("name", Node::str(name)), ("mountPath", Node::str(path))];
    if read_only {
        m.push(("readOnly", Node::Bool(true)));
    }
    map(&m)
}

/// Readable by sidekey's user whatever the pod's fsGroup; only sidekey's container mounts them.
const VOLUME_MODE: u64 = 0o444;

fn apply(template: &mut Map, s: &Settings, classic: bool) -> Result<(), String> {
    let mut container = sidecar();
    container.insert("image", Node::str(&s.image));
    if classic {
        container.0.retain(|(k, _)| k != "restartPolicy");
        // Both containers start together: the probe only holds off the liveness probe, as in
        // examples/kubernetes/deployment-classic-sidecar.yaml.
        if let Some(Node::Map(get)) = container.map_mut("startupProbe").and_then(|p| p.get_mut("httpGet")) {
            get.insert("path", Node::str("/healthz"));
        }
    }
    if let Some(Node::Map(resources)) = container.get_mut("resources") {
        for (key, value) in [("cpu", &s.cpu), ("memory", &s.memory)] {
            if let Some(q) = value {
                for side in ["requests", "limits"] {
                    if let Some(m) = resources.map_mut(side) {
                        m.insert(key, Node::str(q));
                    }
                }
            }
        }
    }
    let mut env: Vec<Node> = s
        .secret_env
        .iter()
        .map(|(var, secret, key)| {
            map(&[
                ("name", Node::str(var)),
                ("valueFrom", map(&[("secretKeyRef", map(&[("name", Node::str(secret)), ("key", Node::str(key))]))])),
            ])
        })
        .collect();
    if let Some(Node::Seq(e)) = container.get_mut("env") {
        env.append(e);
        *e = env;
    }
    let mut volumes = vec![(
        "sidekey-config".to_owned(),
        map(&[("name", Node::str(&s.config)), ("defaultMode", Node::Number(VOLUME_MODE.into()))]),
        "configMap",
    )];
    let mounts = container.seq_mut("volumeMounts").expect("the template has volumeMounts");
    if let Some(secret) = &s.admin_token_secret {
        mounts.push(mount("sidekey-admin-token", ADMIN_TOKEN_DIR, true));
        volumes.push(("sidekey-admin-token".into(), secret_volume(secret), "secret"));
    }
    for (i, (secret, path)) in s.secret_mounts.iter().enumerate() {
        let name = format!("sidekey-secret-{}", i + 1);
        mounts.push(mount(&name, path, true));
        volumes.push((name, secret_volume(secret), "secret"));
    }
    // Where a config's `[audit] path` can be written under the read-only root filesystem, as
    // in the hand-written manifests (examples/kubernetes/configmap.yaml writes it there).
    mounts.push(mount("sidekey-audit", AUDIT_DIR, false));
    volumes.push(("sidekey-audit".into(), map(&[("sizeLimit", Node::str("256Mi"))]), "emptyDir"));
    if s.https_proxy {
        mounts.push(mount("sidekey-ca", CA_DIR, false));
        volumes.push((
            "sidekey-ca".into(),
            map(&[("medium", Node::str("Memory")), ("sizeLimit", Node::str("1Mi"))]),
            "emptyDir",
        ));
    }

    let spec = template.map_mut("spec").ok_or("the pod template's spec is not a mapping")?;
    // Clashes with what the pod already has: a volume name, the admin port or its name.
    let existing_volumes: Vec<String> = match spec.get("volumes") {
        Some(Node::Seq(vs)) => vs.iter().filter_map(|v| v.as_map()?.str("name").map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    if let Some((name, _, _)) = volumes.iter().find(|(n, _, _)| existing_volumes.contains(n)) {
        return Err(format!("the pod already has a volume named {name}"));
    }
    for list in ["initContainers", "containers"] {
        if let Some(Node::Seq(cs)) = spec.get(list) {
            for c in cs {
                if let Some(Node::Seq(ports)) = c.as_map().and_then(|c| c.get("ports")) {
                    for p in ports.iter().filter_map(Node::as_map) {
                        if p.get("containerPort") == Some(&Node::Number(ADMIN_PORT.into()))
                            || p.str("name") == Some("sidekey-admin")
                        {
                            return Err(format!("a container already uses port {ADMIN_PORT} (sidekey's admin port)"));
                        }
                    }
                }
            }
        }
    }
    if !matches!(spec.get("containers"), Some(Node::Seq(cs)) if !cs.is_empty()) {
        return Err("the pod template has no containers".into());
    }

    if s.https_proxy {
        let Some(Node::Seq(apps)) = spec.get_mut("containers") else { unreachable!("checked above") };
        for app in apps.iter_mut().filter_map(Node::as_map_mut) {
            let env = app.seq_mut("env").ok_or("a container's env is not a list")?;
            if !env.iter().any(|e| e.as_map().and_then(|e| e.str("name")) == Some("HTTPS_PROXY")) {
                env.push(map(&[("name", Node::str("HTTPS_PROXY")), ("value", Node::str(PROXY_URL))]));
            }
            app.seq_mut("volumeMounts").ok_or("a container's volumeMounts is not a list")?.push(mount(
                "sidekey-ca",
                CA_DIR,
                true,
            ));
        }
    }
    let first_app = match spec.get("containers") {
        Some(Node::Seq(cs)) => cs.first().and_then(|c| c.as_map()?.str("name").map(str::to_owned)),
        _ => None,
    };
    let list = if classic { "containers" } else { "initContainers" };
    spec.seq_mut(list).ok_or_else(|| format!("the pod's {list} is not a list"))?.insert(0, Node::Map(container));
    let pod_volumes = spec.seq_mut("volumes").ok_or("the pod's volumes is not a list")?;
    for (name, source, kind) in volumes {
        pod_volumes.push(map(&[("name", Node::String(name)), (kind, source)]));
    }

    let annotations = template
        .map_mut("metadata")
        .and_then(|m| m.map_mut("annotations"))
        .ok_or("the pod template's annotations are not a mapping")?;
    if classic {
        // `kubectl logs` and `exec` pick the app, not sidekey, now first in the list.
        if let Some(app) = first_app {
            if annotations.get("kubectl.kubernetes.io/default-container").is_none() {
                annotations.insert("kubectl.kubernetes.io/default-container", Node::String(app));
            }
        }
    }
    if s.scrape {
        let port = ADMIN_PORT.to_string();
        for (key, value) in
            [("prometheus.io/scrape", "true"), ("prometheus.io/port", &port), ("prometheus.io/path", "/metrics")]
        {
            match annotations.str(key) {
                Some(v) if v != value => {
                    return Err(format!(
                        "{PREFIX}scrape: annotations would replace the pod's {key}: {v:?} (the app's own metrics?); scrape sidekey with a PodMonitor instead"
                    ))
                }
                _ => annotations.insert(key, Node::str(value)),
            }
        }
    }
    Ok(())
}

fn secret_volume(name: &str) -> Node {
    map(&[("secretName", Node::str(name)), ("defaultMode", Node::Number(VOLUME_MODE.into()))])
}
