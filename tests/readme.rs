//! The config reference (docs/configuration.md) lists exactly the keys the config parser accepts.

#[test]
fn the_config_reference_covers_every_accepted_key_and_nothing_else() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let section = readme.split("## Config reference").nth(1).expect("a Config reference section");
    let section = section.split("\n## ").next().unwrap();
    let documented: std::collections::BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let accepted: std::collections::BTreeSet<String> = sidekey::config::accepted_keys().into_iter().collect();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty(),
        "keys the config accepts but docs/configuration.md does not document: {undocumented:?}"
    );
    assert!(unknown.is_empty(), "keys docs/configuration.md documents but the config does not accept: {unknown:?}");
}
