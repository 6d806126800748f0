//! `sidekey inject` on YAML files: each workload kind in `tests/golden/kube/*.in.yaml`, injected,
//! must equal its `.out.yaml` (`SIDEKEY_BLESS=1` rewrites them), come back unchanged when
//! injected again, keep every other document byte for byte, and pass kubernetes-validate
//! (strict, 1.30 and the newest schema) and checkov (`tests/servers/lint/run.sh`). What the
//! mutation must add is also checked field by field, so that a blessed golden file cannot hide
//! a wrong one. Bad input exits 1 with the document's position, bad flags exit 2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");
const CASES: &[&str] = &[
    "stream",
    "statefulset",
    "daemonset",
    "replicaset",
    "job",
    "cronjob",
    "pod",
    "list",
    "options",
    "classic",
    "already",
];

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kube")
}

fn inject(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn flags(case: &str) -> Vec<&'static str> {
    if case == "classic" {
        vec!["--classic"]
    } else {
        vec![]
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_kind_is_injected_as_its_golden_file_and_twice_is_once() {
    let bless = std::env::var_os("SIDEKEY_BLESS").is_some();
    for case in CASES {
        let input = std::fs::read(golden().join(format!("{case}.in.yaml"))).unwrap();
        let file = golden().join(format!("{case}.in.yaml"));
        let mut args = flags(case);
        args.extend(["-f", file.to_str().unwrap()]);
        let once = inject(&args, b"");
        assert!(once.status.success(), "{case}: {}", stderr(&once));
        let out_path = golden().join(format!("{case}.out.yaml"));
        if bless {
            std::fs::write(&out_path, &once.stdout).unwrap();
        }
        let expected = std::fs::read(&out_path).unwrap();
        assert!(
            once.stdout == expected,
            "{case}: output differs from {} (SIDEKEY_BLESS=1 to rewrite):\n{}",
            out_path.display(),
            String::from_utf8_lossy(&once.stdout)
        );
        // Standard input, the default, gives the same; and the output injected again is itself.
        let mut stdin_args = flags(case);
        stdin_args.extend(["-f", "-"]);
        assert_eq!(inject(&stdin_args, &input).stdout, once.stdout, "{case}: -f - differs");
        let twice = inject(&flags(case), &once.stdout);
        assert!(twice.status.success(), "{case}: {}", stderr(&twice));
        assert!(twice.stdout == once.stdout, "{case}: injecting twice changed the output");
        if *case == "already" {
            assert_eq!(once.stdout, input, "a workload that has sidekey is left alone");
            assert!(stderr(&once).contains("already has sidekey"), "{}", stderr(&once));
        } else {
            assert!(stderr(&once).contains(": injected"), "{case}: {}", stderr(&once));
        }
    }
}

/// The pod templates of a document: (the template, the workload's kind).
fn templates(doc: &Value) -> Vec<(&Value, String)> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    match kind.as_str() {
        "List" => doc["items"].as_array().unwrap().iter().flat_map(templates).collect(),
        "Pod" => vec![(doc, kind)],
        "CronJob" => vec![(&doc["spec"]["jobTemplate"]["spec"]["template"], kind)],
        _ => vec![(&doc["spec"]["template"], kind)],
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect()).unwrap_or_default()
}

#[test]
fn what_the_mutation_adds_field_by_field() {
    for case in CASES.iter().filter(|c| **c != "already") {
        let input = std::fs::read_to_string(golden().join(format!("{case}.in.yaml"))).unwrap();
        let out = inject(&flags(case), input.as_bytes());
        let output = String::from_utf8(out.stdout).unwrap();
        let (before, after) = (docs(&input), docs(&output));
        assert_eq!(before.len(), after.len(), "{case}");
        for (b, a) in before.iter().zip(&after) {
            for ((tb, kind), (ta, _)) in templates(b).into_iter().zip(templates(a)) {
                let annotations = &tb["metadata"]["annotations"];
                if annotations["sidekey.dev/inject"] != "true" {
                    assert_eq!(tb, ta, "{case}: a template not annotated is unchanged");
                    continue;
                }
                let (spec_b, spec) = (&tb["spec"], &ta["spec"]);
                let classic = *case == "classic";
                let sidecar = if classic { &spec["containers"][0] } else { &spec["initContainers"][0] };
                assert_eq!(sidecar["name"], "sidekey", "{case} {kind}");
                // The app's containers, and its own init containers after sidekey, in order.
                let mut expected_inits = vec![];
                if !classic {
                    expected_inits.push("sidekey");
                }
                expected_inits.extend(names(&spec_b["initContainers"]));
                assert_eq!(names(&spec["initContainers"]), expected_inits, "{case} {kind}");
                let mut expected_apps = if classic { vec!["sidekey"] } else { vec![] };
                expected_apps.extend(names(&spec_b["containers"]));
                assert_eq!(names(&spec["containers"]), expected_apps, "{case} {kind}");
                if classic {
                    assert!(sidecar.get("restartPolicy").is_none());
                    assert_eq!(ta["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"], "app");
                    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/healthz");
                } else {
                    assert_eq!(sidecar["restartPolicy"], "Always", "{case} {kind}: a native sidecar");
                    assert_eq!(
                        sidecar["startupProbe"]["httpGet"]["path"], "/readyz",
                        "{case}: the app waits for tokens"
                    );
                }
                assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
                assert_eq!(
                    sidecar["ports"][0],
                    json!({"name": "sidekey-admin", "containerPort": 9901, "protocol": "TCP"})
                );
                let sc = &sidecar["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true);
                assert_eq!(sc["allowPrivilegeEscalation"], false);
                assert_eq!(sc["runAsNonRoot"], true);
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
                let volumes = spec["volumes"].as_array().unwrap();
                let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).cloned().unwrap_or(Value::Null);
                assert_eq!(volume("sidekey-config")["configMap"]["name"], annotations["sidekey.dev/config"]);
                assert!(sidecar["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .contains(&json!({"name": "sidekey-config", "mountPath": "/etc/sidekey", "readOnly": true})));
                assert_eq!(
                    sidecar["args"],
                    json!(["run", "-c", "/etc/sidekey/sidekey.toml", "--watch-config", "--log-format", "json"])
                );
                let resources = &sidecar["resources"];
                if *case == "options" {
                    assert_eq!(sidecar["image"], "registry.example.com/sidekey:9.9.9");
                    assert_eq!(
                        resources,
                        &json!({"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}})
                    );
                    let pod_annotations = &ta["metadata"]["annotations"];
                    assert_eq!(pod_annotations["prometheus.io/scrape"], "true");
                    assert_eq!(pod_annotations["prometheus.io/port"], "9901");
                    assert_eq!(pod_annotations["prometheus.io/path"], "/metrics");
                    assert_eq!(volume("sidekey-admin-token")["secret"]["secretName"], "demo-admin");
                    assert_eq!(volume("sidekey-secret-1")["secret"]["secretName"], "demo-github");
                    assert_eq!(volume("sidekey-secret-2")["secret"]["secretName"], "demo-aws");
                    let mounts = sidecar["volumeMounts"].as_array().unwrap();
                    for (name, path) in [
                        ("sidekey-admin-token", "/var/run/secrets/sidekey/admin"),
                        ("sidekey-secret-1", "/var/run/secrets/sidekey/github"),
                        ("sidekey-secret-2", "/var/run/secrets/sidekey/aws"),
                    ] {
                        assert!(mounts.contains(&json!({"name": name, "mountPath": path, "readOnly": true})), "{name}");
                    }
                    assert!(mounts.contains(&json!({"name": "sidekey-ca", "mountPath": "/var/run/sidekey/ca"})));
                    assert_eq!(
                        sidecar["env"][0],
                        json!({"name": "IDP_CLIENT_SECRET", "valueFrom": {"secretKeyRef": {"name": "demo-idp", "key": "client-secret"}}})
                    );
                    assert!(!volume("sidekey-ca")["emptyDir"].is_null());
                    for app in spec["containers"].as_array().unwrap() {
                        assert!(app["env"]
                            .as_array()
                            .unwrap()
                            .contains(&json!({"name": "HTTPS_PROXY", "value": "http://127.0.0.1:8080"})));
                        assert!(app["volumeMounts"].as_array().unwrap().contains(
                            &json!({"name": "sidekey-ca", "mountPath": "/var/run/sidekey/ca", "readOnly": true})
                        ));
                    }
                } else {
                    assert_eq!(sidecar["image"], format!("registry.example.com/sidekey:{}", env!("CARGO_PKG_VERSION")));
                    assert_eq!(
                        resources,
                        &json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}})
                    );
                    assert!(
                        ta["metadata"]["annotations"].get("prometheus.io/scrape").is_none(),
                        "no scrape annotations by default"
                    );
                    for app in spec["containers"].as_array().unwrap().iter().filter(|c| c["name"] != "sidekey") {
                        assert!(
                            app.get("volumeMounts").is_none() && app["env"].is_null(),
                            "{case}: the app is untouched"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn documents_without_the_annotation_come_back_byte_for_byte() {
    let input = std::fs::read_to_string(golden().join("stream.in.yaml")).unwrap();
    let out = String::from_utf8(inject(&[], input.as_bytes()).stdout).unwrap();
    let parts: Vec<&str> = input.split("\n---").collect();
    assert_eq!(parts.len(), 4);
    assert!(out.starts_with(parts[0]), "the ConfigMap, comments and all");
    for untouched in &parts[2..] {
        assert!(out.contains(untouched), "left alone:\n{untouched}");
    }
    assert!(out.contains("\n---\n# The app.\napiVersion: apps/v1\n"), "the changed document keeps its leading comment");
}

#[test]
fn the_output_passes_kubernetes_validate_and_checkov() {
    // checkov skips directories whose name starts with a dot, as tempdir()'s do.
    let dir = tempfile::Builder::new().prefix("sidekey-lint").tempdir().unwrap();
    for case in CASES {
        let input = std::fs::read(golden().join(format!("{case}.in.yaml"))).unwrap();
        let out = inject(&flags(case), &input);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        if *case == "list" {
            // kubernetes-validate has no schema for List; its items are what gets applied.
            let list = &docs(&text)[0];
            for (i, item) in list["items"].as_array().unwrap().iter().enumerate() {
                std::fs::write(dir.path().join(format!("list-item-{i}.yaml")), serde_yaml_ng::to_string(item).unwrap())
                    .unwrap();
            }
        } else {
            std::fs::write(dir.path().join(format!("{case}.yaml")), text).unwrap();
        }
    }
    // checkov wants every pod covered by a NetworkPolicy.
    std::fs::write(
        dir.path().join("networkpolicy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    lint(dir.path());
}

/// `tests/servers/lint/run.sh` on a directory: checkov and kubernetes-validate (1.30, newest).
pub fn lint(dir: &Path) {
    let out = Command::new("bash")
        .arg("tests/servers/lint/run.sh")
        .env("SIDEKEY_LINT_DIR", dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bash runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("lint: 3 passed, 0 failed"),
        "lint failed (run tests/servers/install.sh first: it installs checkov and kubernetes-validate):\n{text}"
    );
}

#[test]
fn a_template_without_its_config_map_exits_1_naming_the_workload() {
    let input = std::fs::read_to_string(golden().join("stream.in.yaml")).unwrap();
    let broken = input.replacen("        sidekey.dev/config: demo-sidekey\n", "", 1);
    assert_ne!(broken, input);
    let out = inject(&[], broken.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Deployment demo") && err.contains("sidekey.dev/config is missing"), "{err}");
    assert!(err.contains("document 2"), "{err}");
    assert!(out.stdout.is_empty(), "nothing half-written");

    for (annotation, needle) in [
        ("sidekey.dev/cpu: lots", "sidekey.dev/cpu"),
        ("sidekey.dev/confg: x", "unknown annotation sidekey.dev/confg"),
        ("sidekey.dev/secret-mounts: \"s=/etc/sidekey/x\"", "secret-mounts"),
        ("sidekey.dev/secret-env: \"A=nokey\"", "secret-env"),
        ("sidekey.dev/https-proxy: \"yes\"", "https-proxy"),
    ] {
        let bad = input.replacen(
            "        sidekey.dev/config: demo-sidekey\n",
            &format!("        sidekey.dev/config: demo-sidekey\n        {annotation}\n"),
            1,
        );
        let out = inject(&[], bad.as_bytes());
        assert_eq!(out.status.code(), Some(1), "{annotation}");
        assert!(
            stderr(&out).contains(needle) && stderr(&out).contains("Deployment demo"),
            "{annotation}: {}",
            stderr(&out)
        );
    }
    // On the Deployment's own metadata instead of its template: an error, not a silent no-op.
    let misplaced = input.replacen("        sidekey.dev/inject: \"true\"\n", "", 1).replacen(
        "kind: Deployment\nmetadata:\n  name: demo\n",
        "kind: Deployment\nmetadata:\n  name: demo\n  annotations:\n    sidekey.dev/inject: \"true\"\n",
        1,
    );
    assert_ne!(misplaced, input);
    let out = inject(&[], misplaced.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("belong on the pod template (spec.template.metadata.annotations)"),
        "{}",
        stderr(&out)
    );
    // A Job with --classic would never complete.
    let job = std::fs::read(golden().join("job.in.yaml")).unwrap();
    let out = inject(&["--classic"], &job);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Job demo") && stderr(&out).contains("never complete"), "{}", stderr(&out));
}

#[test]
fn unparsable_yaml_exits_1_with_the_documents_position() {
    let text = "a: 1\n---\nkind: Pod\nmetadata:\n  name: [unclosed\n";
    let out = inject(&[], text.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("<stdin>: document 2: line "), "{err}");
    let line: usize = err.split("line ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((5..=6).contains(&line), "the line in the whole stream: {err}");
    assert!(out.stdout.is_empty());

    let out = inject(&["-f", "/nonexistent/x.yaml"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/x.yaml"));

    let dup = inject(&[], b"kind: Pod\nkind: Deployment\n");
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr(&dup).contains("line 2") && stderr(&dup).contains("duplicate key"), "{}", stderr(&dup));
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--bogus"][..],
        &["--tls-cert", "c.pem"],
        &["--webhook"],
        &["--webhook", "--tls-cert", "c.pem"],
        &["--webhook", "--tls-cert", "c.pem", "--tls-key", "k.pem", "-f", "x.yaml"],
        &["--fail-closed"],
        &["--webhook", "--tls-cert", "c", "--tls-key", "k", "--listen", "not-an-address"],
    ] {
        let out = inject(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}
