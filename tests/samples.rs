//! Every sample config shipped in `config/` passes validation.

#[test]
fn every_sample_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = sidekey::Config::load(&path) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the sample configs in {}", dir.display());
}
