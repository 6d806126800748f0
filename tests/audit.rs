//! The audit log: token events and usage summaries, hash-chained; the chain verifies,
//! continues across a restart, and breaks at the first edited, deleted or reordered line.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn config(up: &Upstream, token: &Path, audit: &Path) -> String {
    format!(
        "{LISTEN}\n[audit]\npath = {:?}\nsummary_interval = \"1h\"\n\n[[routes]]\nname = \"audited\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"aud\"\n\n\
         [tokens.aud]\nsource = \"file\"\npath = {:?}\noverlap = \"0s\"\npropagation = {{ min = 2, ratio = 0.5 }}\n",
        audit.display().to_string(),
        up.url,
        token.display().to_string()
    )
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn rotate(dir: &Path, path: &Path, value: &str) {
    std::fs::write(dir.join("next"), value).unwrap();
    std::fs::rename(dir.join("next"), path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_events_and_usage_are_chained_and_continue_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let log = dir.path().join("audit.log");
    std::fs::write(&token, "audit_value_1").unwrap();
    let up = Upstream::plain().await;
    up.protect();
    up.allow("Bearer audit_value_1");
    let sk = start_proxy(&config(&up, &token, &log)).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 200);
    }
    // A rotation the upstream refuses: rotated, then a propagation failure.
    rotate(dir.path(), &token, "audit_value_2");
    wait_generation(&sk, "aud", 2).await;
    for _ in 0..2 {
        assert_eq!(get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await.status, 401);
    }
    // A refresh that fails.
    rotate(dir.path(), &token, "");
    assert_eq!(post(&c, &format!("http://{}/tokens/aud/refresh", sk.admin_addr)).await.json()["result"], "failed");
    sk.shutdown().await; // writes the last usage summary and flushes

    let recs = records(&log);
    let events: Vec<&str> = recs.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["loaded", "rotated", "propagation_failure", "refresh_failed", "usage"], "{recs:#?}");
    assert_eq!(recs[1]["generation"], 2);
    assert_eq!(recs[1]["previous"], recs[0]["fingerprint"]);
    assert_eq!(recs[2]["route"], "audited");
    assert_eq!(recs[4]["requests"], 5);
    assert_eq!(recs[4]["unauthorized"], 2);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("audit_value_"), "a token value reached the audit log");
    assert_eq!(sidekey::audit::verify(&log), Ok(5));

    // A restart continues the chain.
    let sk = start_proxy(&config(&up, &token, &log)).await;
    sk.shutdown().await;
    let recs = records(&log);
    assert_eq!(recs.len(), 6, "{recs:#?}");
    assert_eq!(recs[5]["seq"], 6);
    assert_eq!(recs[5]["prev"], recs[4]["hash"]);
    assert_eq!(sidekey::audit::verify(&log), Ok(6));
}

#[test]
fn verify_names_the_first_edited_deleted_or_reordered_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    // A real chain, written by the real writer.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let audit = sidekey::audit::Audit::open(&log).unwrap();
        for i in 0..5u64 {
            let mut f = serde_json::Map::new();
            f.insert("token".into(), "t".into());
            f.insert("generation".into(), (i + 1).into());
            audit.event("rotated", f, false);
        }
        audit.flush().await;
    });
    assert_eq!(sidekey::audit::verify(&log), Ok(5));
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
    let write = |name: &str, ls: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, ls.join("\n") + "\n").unwrap();
        p
    };

    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"generation\":3", "\"generation\":30");
    assert_eq!(sidekey::audit::verify(&write("edited", &edited)).unwrap_err().line, 3);

    let mut deleted = lines.clone();
    deleted.remove(1);
    assert_eq!(sidekey::audit::verify(&write("deleted", &deleted)).unwrap_err().line, 2);

    let mut reordered = lines.clone();
    reordered.swap(3, 4);
    assert_eq!(sidekey::audit::verify(&write("reordered", &reordered)).unwrap_err().line, 4);

    let first_gone = lines[1..].to_vec();
    assert_eq!(sidekey::audit::verify(&write("headless", &first_gone)).unwrap_err().line, 1);

    // The CLI says the same.
    let bin = env!("CARGO_BIN_EXE_sidekey");
    let ok = Command::new(bin).args(["audit", "verify"]).arg(&log).output().unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("5 records, chain intact"));
    let bad = Command::new(bin).args(["audit", "verify"]).arg(dir.path().join("reordered")).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 4:"), "{}", String::from_utf8_lossy(&bad.stderr));
}
