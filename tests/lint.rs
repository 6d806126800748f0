//! The deployment files pass their linters: checkov on the Dockerfile and the Kubernetes
//! manifests (zero failed checks; the skip list in `.checkov.yaml` says why for each),
//! kubernetes-validate against two Kubernetes versions, the PodMonitor against its CRD, and
//! the ConfigMap's config through this build's `sidekey check` (`tests/servers/lint/run.sh`).

use std::process::Command;

#[test]
fn dockerfile_and_kubernetes_manifests_pass_their_linters() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg("tests/servers/lint/run.sh")
        .env("SIDEKEY_BIN", env!("CARGO_BIN_EXE_sidekey"))
        .current_dir(root)
        .output()
        .expect("bash runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(
        out.status.success(),
        "lint failed (run tests/servers/install.sh first: it installs checkov and kubernetes-validate):\n{text}"
    );
    assert!(text.contains("lint: 6 passed, 0 failed"), "{text}");
}
