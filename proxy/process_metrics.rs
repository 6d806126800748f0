//! The standard `process_*` metrics (the names Prometheus client libraries export), read from
//! `/proc/self` when `/metrics` is rendered. Off Linux, or when `/proc` is not mounted, the
//! families are left out rather than written as zeros.

use std::fmt::Write;

/// Name, type and HELP of each family.
pub const PROCESS_FAMILIES: &[(&str, &str, &str)] = &[
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes"),
    ("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds"),
    ("process_open_fds", "gauge", "Number of open file descriptors"),
    ("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds"),
];

/// Appends the process families with HELP and TYPE lines.
pub fn render(text: &mut String) {
    let Some(values) = read() else { return };
    for ((name, kind, help), value) in PROCESS_FAMILIES.iter().zip(values) {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    }
}

/// Resident bytes, CPU seconds, open descriptors, start time: in [`PROCESS_FAMILIES`] order.
fn read() -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14, 15 (utime, stime), 22 (starttime, ticks since boot), 24 (rss, pages); after
    // the name, field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let cpu = (field(14)? + field(15)?) / ticks;
    let rss = field(24)? * page;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
    let start = boot + field(22)? / ticks;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    Some([rss, cpu, fds, start])
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_plausible_values_of_this_process() {
        let [rss, cpu, fds, start] = super::read().expect("/proc is mounted");
        assert!(rss > 1e6, "{rss}");
        assert!(cpu >= 0.0, "{cpu}");
        assert!(fds >= 3.0, "{fds}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 86400.0 * 365.0, "{start} against {now}");
        let mut text = String::new();
        super::render(&mut text);
        assert_eq!(text.lines().filter(|l| l.starts_with("# HELP process_")).count(), 4, "{text}");
    }
}
