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

mod support;

use std::collections::BTreeSet;

/// The backticked names in the row of README.md's admin API table for `path`.
fn readme_fields(path: &str) -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme.lines().find(|l| l.starts_with(&format!("| `GET {path}` |"))).expect("a row");
    let answer = row.splitn(3, '|').nth(2).unwrap();
    // Odd pieces between backticks are names; `sha256:` is a value's form, not a field.
    answer.split('`').skip(1).step_by(2).filter(|w| !w.contains(':')).map(str::to_owned).collect()
}

/// The README's `/tokens` and `/routes` fields and docs/configuration.md's metrics table are
/// what the code serves, both ways.
#[tokio::test]
async fn the_admin_api_and_metrics_references_match_the_code_both_ways() {
    use support::*;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "ref-value").unwrap();
    let up = Upstream::plain().await;
    let sk = start_proxy(&format!(
        "{LISTEN}[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"{}\"\ntoken = \"t\"\n[tokens.t]\nsource = \"file\"\npath = {:?}\n",
        up.url,
        token.display().to_string()
    ))
    .await;
    let c = client();
    get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await;
    for (path, documented) in [("/tokens", readme_fields("/tokens")), ("/routes", readme_fields("/routes"))] {
        let served = get(&c, &format!("http://{}{path}", sk.admin_addr)).await.json();
        let keys: BTreeSet<String> = served[0].as_object().unwrap().keys().cloned().collect();
        let undocumented: Vec<_> = keys.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&keys).collect();
        assert!(undocumented.is_empty(), "{path} serves fields README.md does not list: {undocumented:?}");
        assert!(unknown.is_empty(), "README.md lists {path} fields it does not serve: {unknown:?}");
    }

    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let table = docs.split("\n## Metrics").nth(1).expect("a Metrics section");
    let documented: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let code: BTreeSet<String> = sidekey::metrics::FAMILIES
        .iter()
        .map(|(n, _)| *n)
        .chain(sidekey::process_metrics::PROCESS_FAMILIES.iter().map(|(n, _, _)| *n))
        .chain([sidekey::metrics::DURATION])
        .map(str::to_owned)
        .collect();
    assert_eq!(
        documented.difference(&code).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented metrics the code does not have"
    );
    assert_eq!(code.difference(&documented).collect::<Vec<_>>(), Vec::<&String>::new(), "undocumented metrics");
    // And every family on the page is one of them (a family the code adds without a HELP entry
    // would be missing from FAMILIES).
    let page = get(&c, &format!("http://{}/metrics", sk.admin_addr)).await.text();
    for name in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()) {
        assert!(documented.contains(name), "{name} is served but not documented");
        assert!(page.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }
    sk.shutdown().await;
}
