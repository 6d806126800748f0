//! The picture of a harness run, drawn from its JSON result (`target/load/result.svg` beside
//! `result.json`, or `--svg-from JSON --svg FILE` for an older result): latency percentiles
//! per target at concurrency 1, requests/s and CPU per request at concurrency 64, bytes per
//! idle keep-alive connection, and, when the run had them, the worker-scaling, large-body,
//! HTTP/2, Unix-socket and gRPC rows. Plain SVG text: bars with their figures written on them, one panel per
//! measure; a panel whose figures the run did not take says so.

use serde_json::Value;

const WIDTH: f64 = 960.0;
const TOP: f64 = 50.0;
/// Left of the bars: room for the target names, at least.
const LABEL_W: f64 = 150.0;
const COLOURS: [&str; 5] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];

/// `&`, `<`, `>` and quotes as XML wants them in text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A figure as the bars show it: three significant digits at most, thousands in full.
fn figure(v: f64) -> String {
    // A negative figure (an added latency below the direct run's) is written as its size is.
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One panel of horizontal bars: per row a label and one value per series (`None`: not
/// measured), bars of one row stacked one under the other, a scale shared by the panel.
struct Panel<'a> {
    title: String,
    series: Vec<&'a str>,
    rows: Vec<(String, Vec<Option<f64>>)>,
    unit: &'a str,
}

impl Panel<'_> {
    fn height(&self) -> f64 {
        if self.rows.is_empty() {
            return 60.0;
        }
        self.rows.iter().map(|r| r.1.len() as f64 * 14.0 + 8.0).sum::<f64>() + 56.0
    }

    /// Where the bars start: right of the longest label (~7 px a character at 12 px).
    fn label_w(&self) -> f64 {
        let longest = self.rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        LABEL_W.max(longest as f64 * 7.0 + 16.0)
    }

    fn draw(&self, out: &mut String, y: f64) {
        let label_w = self.label_w();
        out.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
            y + 18.0,
            escape(&self.title)
        ));
        if self.rows.is_empty() {
            out.push_str(&format!(
                "<text x=\"{label_w}\" y=\"{:.1}\" font-size=\"12\" fill=\"#777\">not measured in this run</text>\n",
                y + 42.0
            ));
            return;
        }
        // The legend, when there is more than one series.
        if self.series.len() > 1 {
            let mut x = label_w;
            for (i, s) in self.series.iter().enumerate() {
                out.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>\n",
                    y + 28.0,
                    COLOURS[i % COLOURS.len()],
                    x + 14.0,
                    y + 37.0,
                    escape(s)
                ));
                x += 24.0 + 7.0 * s.len() as f64;
            }
        }
        let max = self.rows.iter().flat_map(|r| r.1.iter().flatten()).copied().fold(0.0_f64, f64::max);
        let span = WIDTH - label_w - 110.0;
        let mut row_y = y + 48.0;
        for (label, values) in &self.rows {
            let band = values.len() as f64 * 14.0;
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>\n",
                label_w - 8.0,
                row_y + band / 2.0 + 4.0,
                escape(label)
            ));
            for (i, v) in values.iter().enumerate() {
                let bar_y = row_y + i as f64 * 14.0;
                match v {
                    Some(v) => {
                        let w = if max > 0.0 { (v / max * span).max(1.0) } else { 1.0 };
                        out.push_str(&format!(
                            "<rect x=\"{label_w}\" y=\"{bar_y:.1}\" width=\"{w:.1}\" height=\"12\" fill=\"{}\"/>\
                             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{} {}</text>\n",
                            COLOURS[i % COLOURS.len()],
                            label_w + w + 4.0,
                            bar_y + 10.0,
                            figure(*v),
                            escape(self.unit)
                        ));
                    }
                    None => out.push_str(&format!(
                        "<text x=\"{label_w}\" y=\"{:.1}\" font-size=\"11\" fill=\"#777\">-</text>\n",
                        bar_y + 10.0
                    )),
                }
            }
            row_y += band + 8.0;
        }
    }
}

/// The rows of `doc[key]` (an array of objects named by `target`), in the harness's order.
fn by_target<'a>(doc: &'a Value, key: &str) -> Vec<(String, &'a Value)> {
    let rows = doc[key].as_array().map(Vec::as_slice).unwrap_or_default();
    rows.iter().filter_map(|r| Some((r["target"].as_str()?.to_owned(), r))).collect()
}

/// The SVG document for a harness result.
pub fn render(doc: &Value) -> String {
    let results = by_target(doc, "results");
    let settings = &doc["settings"];
    let mut panels = vec![
        Panel {
            title: "Latency at concurrency 1 (wrk, µs; less is better)".into(),
            series: vec!["p50", "p90", "p99", "p99.9"],
            rows: results
                .iter()
                .map(|(t, r)| (t.clone(), ["p50_us", "p90_us", "p99_us", "p999_us"].map(|k| r[k].as_f64()).to_vec()))
                .collect(),
            unit: "µs",
        },
        Panel {
            title: "Requests/s at concurrency 64 (more is better)".into(),
            series: vec!["req/s"],
            rows: results.iter().map(|(t, r)| (t.clone(), vec![r["rps_c64"].as_f64()])).collect(),
            unit: "req/s",
        },
        Panel {
            title: "Proxy CPU per request at concurrency 64 (µs; less is better)".into(),
            series: vec!["CPU"],
            rows: results
                .iter()
                .filter(|(_, r)| r["cpu_us_per_request"].is_number())
                .map(|(t, r)| (t.clone(), vec![r["cpu_us_per_request"].as_f64()]))
                .collect(),
            unit: "µs",
        },
    ];
    let idle = by_target(doc, "idle");
    let idle_count = idle.first().map(|(_, r)| r["connections"].to_string()).unwrap_or_default();
    panels.push(Panel {
        title: format!("Memory per idle keep-alive connection ({idle_count} connections; bytes, less is better)"),
        series: vec!["bytes"],
        rows: idle
            .iter()
            .filter(|(_, r)| r["bytes_per_connection"].is_number())
            .map(|(t, r)| (t.clone(), vec![r["bytes_per_connection"].as_f64()]))
            .collect(),
        unit: "B",
    });
    if let Some(rows) = doc["scaling"].as_array() {
        panels.push(Panel {
            title: "Workers 1 -> 2 at concurrency 256 (requests/s)".into(),
            series: vec!["1 worker", "2 workers"],
            rows: rows
                .iter()
                .filter_map(|r| {
                    let t = r["target"].as_str()?.to_owned();
                    Some((t, vec![r["rps_1"].as_f64(), r["rps_2"].as_f64()]))
                })
                .collect(),
            unit: "req/s",
        });
    }
    if let Some(rows) = doc["bodies"].as_array() {
        panels.push(Panel {
            title: "Large bodies at concurrency 16 (MiB/s through the proxy)".into(),
            series: vec!["throughput"],
            rows: rows
                .iter()
                .filter_map(|r| Some((r["label"].as_str()?.to_owned(), vec![r["mib_per_s"].as_f64()])))
                .collect(),
            unit: "MiB/s",
        });
    }
    if let Some(rows) = doc["h2"].as_array() {
        panels.push(Panel {
            title: "HTTP/2 upstream (requests/s; h2c clients: h2load, HTTP/1.1 clients: wrk c64)".into(),
            series: vec!["req/s"],
            rows: rows
                .iter()
                .filter_map(|r| {
                    let path = if r["path"].as_str()?.starts_with("h2c") { "h2c in" } else { "HTTP/1.1 in" };
                    Some((format!("{}, {path}", r["target"].as_str()?), vec![r["rps"].as_f64()]))
                })
                .collect(),
            unit: "req/s",
        });
    }
    let proxied = |key: &str| -> Vec<(String, &Value)> {
        by_target(doc, key).into_iter().filter(|(_, r)| r["added_p50_us"].is_number()).collect()
    };
    if doc["unix"].is_array() {
        let rows = proxied("unix");
        panels.push(Panel {
            title: "Unix socket against TCP: added latency at concurrency 1 (µs, timed to the ns; less is better)"
                .into(),
            series: vec!["added p50", "added p99"],
            rows: rows
                .iter()
                .map(|(t, r)| (t.clone(), vec![r["added_p50_us"].as_f64(), r["added_p99_us"].as_f64()]))
                .collect(),
            unit: "µs",
        });
        panels.push(Panel {
            title: "Unix socket against TCP: CPU per request at concurrency 64 (µs; less is better)".into(),
            series: vec!["CPU"],
            rows: rows.iter().map(|(t, r)| (t.clone(), vec![r["cpu_us_per_request"].as_f64()])).collect(),
            unit: "µs",
        });
    }
    if doc["grpc"].is_array() {
        panels.push(Panel {
            title: "A unary gRPC call's added latency at concurrency 1 (µs; less is better)".into(),
            series: vec!["added p50", "added p99"],
            rows: proxied("grpc")
                .iter()
                .map(|(t, r)| (t.clone(), vec![r["added_p50_us"].as_f64(), r["added_p99_us"].as_f64()]))
                .collect(),
            unit: "µs",
        });
    }
    let height = TOP + panels.iter().map(|p| p.height() + 20.0).sum::<f64>() + 20.0;
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let caption = format!(
        "sidekey load harness: {} rounds of {} s, {} CPUs, {}",
        settings["rounds"],
        settings["duration_s"],
        doc["machine"]["cpus"],
        doc["machine"]["kernel"].as_str().unwrap_or("kernel unknown")
    );
    out.push_str(&format!("<text x=\"10\" y=\"24\" font-size=\"13\" fill=\"#333\">{}</text>\n", escape(&caption)));
    let mut y = TOP;
    for p in &panels {
        p.draw(&mut out, y);
        y += p.height() + 20.0;
    }
    out.push_str("</svg>\n");
    out
}
