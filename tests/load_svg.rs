//! The load harness's picture (`benches/load/svg.rs`): drawn from a result's JSON, it must be
//! well-formed XML with a figure for each target the result has, and say which panels the run
//! did not measure.

#[allow(dead_code)]
#[path = "../benches/load/svg.rs"]
mod svg;

use serde_json::json;

/// Checks `text` is well-formed XML as far as this picture uses it: one root element, every
/// tag closed in order, attributes quoted, `&` only in the five entities, no `<` in text.
/// Returns the element names in document order.
fn well_formed(text: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut roots = 0;
    let mut rest = text.strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>").ok_or("no XML declaration")?;
    let entity_ok = |s: &str| -> Result<(), String> {
        let mut parts = s.split('&');
        parts.next();
        for p in parts {
            if !["amp;", "lt;", "gt;", "quot;", "apos;"].iter().any(|e| p.starts_with(e)) {
                return Err(format!("a bare & before {:?}", &p[..p.len().min(10)]));
            }
        }
        Ok(())
    };
    while !rest.is_empty() {
        let lt = rest.find('<').unwrap_or(rest.len());
        let textual = &rest[..lt];
        if textual.contains('>') {
            return Err(format!("a bare > in text {textual:?}"));
        }
        entity_ok(textual)?;
        if !textual.trim().is_empty() && stack.is_empty() {
            return Err(format!("text outside the root: {textual:?}"));
        }
        rest = &rest[lt..];
        if rest.is_empty() {
            break;
        }
        let gt = rest.find('>').ok_or("an unclosed tag")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if tag.contains('<') {
            return Err(format!("a < inside tag {tag:?}"));
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("</{name}> closes <{open}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name = body.split_whitespace().next().ok_or("an empty tag")?.to_owned();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
            return Err(format!("a bad element name {name:?}"));
        }
        // Attributes: name="value" pairs, values without `"` or `<`.
        let mut attrs = body[name.len()..].trim();
        while !attrs.is_empty() {
            let eq = attrs.find("=\"").ok_or_else(|| format!("an unquoted attribute in {tag:?}"))?;
            let attr = &attrs[..eq];
            if attr.is_empty() || !attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
                return Err(format!("a bad attribute name {attr:?} in {tag:?}"));
            }
            let value_end = attrs[eq + 2..].find('"').ok_or_else(|| format!("an unclosed value in {tag:?}"))?;
            entity_ok(&attrs[eq + 2..eq + 2 + value_end])?;
            attrs = attrs[eq + 2 + value_end + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        names.push(name.clone());
        if !self_closing {
            stack.push(name);
        }
    }
    if let Some(open) = stack.pop() {
        return Err(format!("<{open}> is never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(names)
}

fn result() -> serde_json::Value {
    let row = |t: &str, p50: f64, rps: f64, cpu: Option<f64>| {
        json!({ "target": t, "p50_us": p50, "p90_us": p50 + 2.0, "p99_us": p50 + 20.0, "p999_us": p50 + 60.0,
                "rps_c64": rps, "cpu_us_per_request": cpu })
    };
    json!({
        "machine": { "cpus": 2, "kernel": "6.1.0 <test> & co" },
        "settings": { "rounds": 1, "duration_s": 2 },
        "results": [row("direct", 15.0, 86665.0, None), row("sidekey", 32.0, 80897.0, Some(11.7)),
                    row("nginx", 32.5, 80856.0, Some(12.1))],
        "idle": [
            { "target": "sidekey", "connections": 10000, "bytes_per_connection": 5502.0 },
            { "target": "nginx", "connections": 10000, "bytes_per_connection": 526.0 },
            { "target": "haproxy", "connections": 10000, "skipped": "needs <more> descriptors" },
        ],
    })
}

#[test]
fn the_picture_is_well_formed_and_shows_each_figure() {
    let text = svg::render(&result());
    let names = well_formed(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(names.first().map(String::as_str), Some("svg"));
    // 4 latency bars for each of 3 targets, 3 req/s bars, 2 CPU bars, 2 idle bars.
    assert_eq!(names.iter().filter(|n| *n == "rect").count(), 1 + 4 + 12 + 3 + 2 + 2, "{text}");
    for figure in ["80897 req/s", "11.7 µs", "12.1 µs", "5502 B", "526 B", "32.0 µs", "92.5 µs"] {
        assert!(text.contains(figure), "{figure} missing:\n{text}");
    }
    for target in ["direct", "sidekey", "nginx"] {
        assert!(text.contains(&format!(">{target}</text>")), "{target} missing");
    }
    // The skipped proxy draws no bar; the kernel's name is escaped.
    assert!(!text.contains(">haproxy</text>"), "{text}");
    assert!(text.contains("&lt;test&gt; &amp; co"), "{text}");
}

#[test]
fn the_h2_unix_and_grpc_rows_get_panels_of_their_own() {
    let mut doc = result();
    doc["h2"] = json!([
        { "path": "h2c in, HTTP/2 upstream", "target": "sidekey", "rps": 61234.0 },
        { "path": "HTTP/1.1 in, HTTP/2 upstream", "target": "nginx grpc_pass", "rps": 40321.0 },
    ]);
    doc["unix"] = json!([
        { "target": "direct", "p50_us": 13.8, "added_p50_us": null, "cpu_us_per_request": null },
        { "target": "sidekey tcp", "added_p50_us": 18.4, "added_p99_us": 34.0, "cpu_us_per_request": 11.7 },
        { "target": "sidekey unix", "added_p50_us": 15.3, "added_p99_us": 30.5, "cpu_us_per_request": 10.2 },
        { "target": "nginx unix", "added_p50_us": 16.0, "added_p99_us": 41.0, "cpu_us_per_request": 10.9 },
    ]);
    doc["grpc"] = json!([
        { "target": "direct", "p50_us": 310.0, "added_p50_us": null },
        { "target": "sidekey", "added_p50_us": 42.5, "added_p99_us": 61.0 },
        { "target": "nginx grpc_pass", "added_p50_us": 55.0, "added_p99_us": -312.4 },
    ]);
    let text = svg::render(&doc);
    well_formed(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The first test's 24, then 2 HTTP/2 bars; the Unix latency legend (2) and bars (3 x 2) and
    // its CPU bars (3); the gRPC legend (2) and bars (2 x 2).
    assert_eq!(text.matches("<rect").count(), 24 + 2 + 2 + 6 + 3 + 2 + 4, "{text}");
    for figure in ["61234 req/s", "40321 req/s", "15.3 µs", "30.5 µs", "10.2 µs", "42.5 µs", "-312 µs"] {
        assert!(text.contains(figure), "{figure} missing:\n{text}");
    }
    for label in ["sidekey, h2c in", "nginx grpc_pass, HTTP/1.1 in", "sidekey unix", "nginx unix", "nginx grpc_pass"] {
        assert!(text.contains(&format!(">{label}</text>")), "{label} missing:\n{text}");
    }
    // The direct rows have no added figure: named in the first two panels only.
    assert_eq!(text.matches(">direct</text>").count(), 2, "{text}");
}

#[test]
fn panels_the_run_did_not_measure_say_so() {
    let mut doc = result();
    doc.as_object_mut().unwrap().remove("idle");
    let text = svg::render(&doc);
    well_formed(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(text.matches("not measured in this run").count(), 1, "{text}");
    let text = svg::render(&json!({}));
    well_formed(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(text.matches("not measured in this run").count(), 4, "{text}");
}

#[test]
fn the_checker_rejects_what_is_not_well_formed() {
    let ok = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg a=\"1\"><text>x &amp; y</text><rect/></svg>\n";
    assert!(well_formed(ok).is_ok());
    for bad in [
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg><text>x & y</text></svg>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg><text>x</svg></text>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg a=1></svg>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg></svg><svg></svg>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg><text>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg><text>1 > 0</text></svg>",
    ] {
        assert!(well_formed(bad).is_err(), "{bad}");
    }
}
