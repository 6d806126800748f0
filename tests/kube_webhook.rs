//! `sidekey inject --webhook` over TLS, as the API server calls it: an AdmissionReview v1 of a
//! pod's CREATE (`tests/golden/kube/admission-review-pod.json`, shaped as the API reference
//! shows one: a ReplicaSet's pod with the API server's defaults), the JSONPatch it answers
//! applied with the json-patch crate, the result the same as `sidekey inject` makes of that pod
//! and valid for kubernetes-validate and checkov. A malformed review gets a 4xx, never a crash;
//! a renewed certificate is served without a restart.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};
use support::{TestCa, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");

struct Webhook {
    child: Child,
    addr: String,
    lines: Receiver<String>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start(cert: &Path, key: &Path, extra: &[&str]) -> Webhook {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "inject", "--webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut w = Webhook { child, addr: String::new(), lines };
        let line: Value = serde_json::from_str(&w.wait_line("sidekey webhook listening")).unwrap();
        w.addr = line["fields"]["listen"].as_str().or(line["listen"].as_str()).unwrap().to_owned();
        w
    }

    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.rsplit(':').next().unwrap())
    }
}

type TlsClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// A client that trusts `ca_file` only; HTTP/2 when `h2`, as the API server's client offers.
fn client(ca_file: &Path, h2: bool) -> TlsClient {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
    let connector = if h2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(h2);
    client.build(connector)
}

async fn call(client: &TlsClient, method: &str, url: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let answer = support::bounded("webhook call", client.request(req)).await.map_err(|e| format!("{e:?}"))?;
    let status = answer.status().as_u16();
    let body = support::bounded("webhook body", answer.into_body().collect()).await.unwrap().to_bytes().to_vec();
    Ok((status, body))
}

async fn review(client: &TlsClient, w: &Webhook, review: &Value) -> Value {
    let (status, body) = call(client, "POST", &w.url("/mutate"), serde_json::to_vec(review).unwrap()).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"], "the answer carries the request's uid");
    answer["response"].clone()
}

/// The object with the response's JSONPatch applied (the object itself when there is none).
fn patched(object: &Value, response: &Value) -> Value {
    let mut out = object.clone();
    if let Some(patch) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(patch).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
    }
    out
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kube/admission-review-pod.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cli_inject(object: &Value) -> Value {
    let mut child = Command::new(BIN)
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(object).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let doc = Value::deserialize(serde_yaml_ng::Deserializer::from_str(&text).next().unwrap()).unwrap();
    doc
}

fn lint(dir: &Path) {
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

fn leaf(ca: &TestCa) -> (PathBuf, PathBuf) {
    ca.leaf_files()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_admission_review_gets_the_same_mutation_as_a_json_patch() {
    let ca = TestCa::new();
    let (cert, key) = leaf(&ca);
    let w = Webhook::start(&cert, &key, &["--image", "registry.example.com/sidekey:7.7.7"]);
    for h2 in [true, false] {
        let c = client(&ca.ca_file, h2);
        let (status, body) = call(&c, "GET", &w.url("/healthz"), vec![]).await.unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));

        let request = fixture();
        let object = &request["request"]["object"];
        let response = review(&c, &w, &request).await;
        assert_eq!(response["allowed"], true);
        assert!(response["warnings"].is_null(), "{response}");
        let pod = patched(object, &response);
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "sidekey");
        assert_eq!(pod["spec"]["initContainers"][0]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["initContainers"][0]["image"], "registry.example.com/sidekey:7.7.7", "--image is used");
        assert_eq!(pod, cli_inject_with_image(object), "the webhook's patch makes what sidekey inject makes");
        assert_eq!(pod["metadata"], patched(object, &json!({}))["metadata"], "the pod's metadata is left alone");

        // Reinvoked (reinvocationPolicy: IfNeeded) on the pod it made: nothing more.
        let mut again = request.clone();
        again["request"]["object"] = pod.clone();
        let response = review(&c, &w, &again).await;
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{response}");

        // Validate the injected pod as the CLI's outputs are.
        let dir = tempfile::Builder::new().prefix("sidekey-lint").tempdir().unwrap();
        let mut pod_file = pod.clone();
        pod_file["metadata"]["name"] = json!("my-app-7c9d8f6b5d-x2x9q");
        pod_file.as_object_mut().unwrap().remove("status");
        pod_file["metadata"].as_object_mut().unwrap().remove("managedFields");
        std::fs::write(dir.path().join("pod.yaml"), serde_yaml_ng::to_string(&pod_file).unwrap()).unwrap();
        std::fs::write(
            dir.path().join("networkpolicy.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
        )
        .unwrap();
        if h2 {
            lint(dir.path());
        }
    }
}

fn cli_inject_with_image(object: &Value) -> Value {
    let mut object = object.clone();
    object["metadata"]["annotations"]["sidekey.dev/image"] = json!("registry.example.com/sidekey:7.7.7");
    let mut injected = cli_inject(&object);
    injected["metadata"]["annotations"].as_object_mut().unwrap().remove("sidekey.dev/image");
    injected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_injected_is_admitted_unchanged_or_warned_about() {
    let ca = TestCa::new();
    let (cert, key) = leaf(&ca);
    let w = Webhook::start(&cert, &key, &["--image", "registry.example.com/sidekey:7.7.7"]);
    let c = client(&ca.ca_file, false);
    let base = fixture();

    // Not annotated, annotated "false", or an UPDATE of a pod: no patch.
    for edit in [json!({"sidekey.dev/inject": null}), json!({"sidekey.dev/inject": "false"})] {
        let mut r = base.clone();
        json_patch::merge(&mut r["request"]["object"]["metadata"]["annotations"], &edit);
        let response = review(&c, &w, &r).await;
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none() && response.get("warnings").is_none(), "{response}");
    }
    let mut update = base.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let response = review(&c, &w, &update).await;
    assert!(response.get("patch").is_none(), "{response}");

    // No ConfigMap named: admitted without sidekey, with a warning naming the pod.
    let mut r = base.clone();
    r["request"]["object"]["metadata"]["annotations"].as_object_mut().unwrap().remove("sidekey.dev/config");
    let response = review(&c, &w, &r).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(warning.contains("Pod my-app/my-app-7c9d8f6b5d-*") && warning.contains("sidekey.dev/config"), "{warning}");
    w.wait_line("cannot inject sidekey");

    // A Deployment (a webhook registered for workloads too) gets the same mutation.
    let deployment = cli_deployment();
    let mut r = base.clone();
    r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    r["request"]["object"] = deployment.clone();
    let response = review(&c, &w, &r).await;
    let mut expected = deployment.clone();
    expected["spec"]["template"]["metadata"]["annotations"]["sidekey.dev/image"] =
        json!("registry.example.com/sidekey:7.7.7");
    let mut expected = cli_inject(&expected);
    expected["spec"]["template"]["metadata"]["annotations"].as_object_mut().unwrap().remove("sidekey.dev/image");
    assert_eq!(patched(&deployment, &response), expected);

    // --fail-closed: the same pod is refused.
    let closed = Webhook::start(&cert, &key, &["--fail-closed"]);
    let mut r = base.clone();
    r["request"]["object"]["metadata"]["annotations"].as_object_mut().unwrap().remove("sidekey.dev/config");
    let response = review(&c, &closed, &r).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert!(response["status"]["message"].as_str().unwrap().contains("sidekey.dev/config"));
}

fn cli_deployment() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/deployment-annotated.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc = Value::deserialize(serde_yaml_ng::Deserializer::from_str(&text).next().unwrap()).unwrap();
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_review_gets_an_error_answer_not_a_crash() {
    let ca = TestCa::new();
    let (cert, key) = leaf(&ca);
    let w = Webhook::start(&cert, &key, &[]);
    // HTTP/2, as the API server speaks it: an answer before the whole body (413) is no race.
    let c = client(&ca.ca_file, true);
    let mut no_uid = fixture();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut v1beta1 = fixture();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"not json".to_vec(), 400),
        (b"{}".to_vec(), 400),
        (b"[1,2]".to_vec(), 400),
        (serde_json::to_vec(&no_uid).unwrap(), 400),
        (serde_json::to_vec(&v1beta1).unwrap(), 400),
        (format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), 400),
        (vec![b' '; 9 * 1024 * 1024], 413),
    ];
    for (body, want) in cases {
        let (status, answer) = call(&c, "POST", &w.url("/mutate"), body).await.unwrap();
        assert_eq!(status, want, "{}", String::from_utf8_lossy(&answer));
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert!(answer["error"].is_string());
    }
    assert_eq!(call(&c, "GET", &w.url("/mutate"), vec![]).await.unwrap().0, 405);
    assert_eq!(call(&c, "GET", &w.url("/nope"), vec![]).await.unwrap().0, 404);
    // A body that never finishes arriving: answered 408, not held open.
    let slow = slow_body(&ca.ca_file, &w).await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    // Still serving.
    assert_eq!(call(&c, "GET", &w.url("/healthz"), vec![]).await.unwrap().0, 200);
    let response = review(&c, &w, &fixture()).await;
    assert!(response["patch"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let (first, second) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let install = |ca: &TestCa| {
        let (c, k) = ca.leaf_files();
        // As the kubelet swaps a Secret: new files renamed into place.
        std::fs::copy(&k, dir.path().join("tls.key.new")).unwrap();
        std::fs::copy(&c, dir.path().join("tls.crt.new")).unwrap();
        std::fs::rename(dir.path().join("tls.key.new"), &key).unwrap();
        std::fs::rename(dir.path().join("tls.crt.new"), &cert).unwrap();
    };
    install(&first);
    let w = Webhook::start(&cert, &key, &[]);
    let (old, new) = (client(&first.ca_file, false), client(&second.ca_file, false));
    assert_eq!(call(&old, "GET", &w.url("/healthz"), vec![]).await.unwrap().0, 200);
    assert!(call(&new, "GET", &w.url("/healthz"), vec![]).await.is_err(), "not trusted yet");

    install(&second);
    w.wait_line("webhook certificate reloaded");
    let fresh_new = client(&second.ca_file, false);
    assert_eq!(call(&fresh_new, "GET", &w.url("/healthz"), vec![]).await.unwrap().0, 200);
    let fresh_old = client(&first.ca_file, false);
    assert!(call(&fresh_old, "GET", &w.url("/healthz"), vec![]).await.is_err(), "the old certificate is gone");

    // A key that does not match: logged, and the certificate in force kept.
    std::fs::copy(first.leaf_files().1, dir.path().join("tls.key.new")).unwrap();
    std::fs::rename(dir.path().join("tls.key.new"), &key).unwrap();
    let line = w.wait_line("cannot reload the webhook certificate");
    assert!(!line.contains("PRIVATE KEY"), "the key never reaches a log line: {line}");
    let again = client(&second.ca_file, false);
    assert_eq!(call(&again, "GET", &w.url("/healthz"), vec![]).await.unwrap().0, 200);
}

/// Sends a review's head and one byte of its announced 100, then waits for the answer.
async fn slow_body(ca_file: &Path, w: &Webhook) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await.unwrap();
    stream.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT * 2, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    });
    read.await.expect("an answer within the body timeout");
    String::from_utf8_lossy(&answer).into_owned()
}
