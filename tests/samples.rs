//! Every sample config in `config/` passes `sidekey check` (the real binary), and together
//! they show every token source kind.

use std::process::Command;

#[test]
fn every_sample_config_passes_sidekey_check_and_every_source_kind_has_one() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut kinds = std::collections::BTreeSet::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_sidekey")).args(["check", "-c"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        let config = sidekey::Config::load(&path).unwrap();
        kinds.extend(config.tokens.values().map(|t| t.kind()));
        checked += 1;
    }
    assert!(checked >= 5, "expected the sample configs in {}", dir.display());
    let all: std::collections::BTreeSet<&str> =
        ["env", "file", "oauth2", "http", "exec", "aws_web_identity", "token_exchange"].into();
    assert_eq!(kinds, all, "a source kind has no sample");
}
