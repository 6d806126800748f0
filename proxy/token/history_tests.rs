use super::*;

#[test]
fn history_keeps_an_hour_of_minutes_and_reports_deltas() {
    let mut h = History::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for i in 0..100u64 {
        h.record(t0 + Duration::from_secs(60 * i), i * 10, i);
    }
    assert_eq!(h.samples.len(), History::KEEP);
    let now = t0 + Duration::from_secs(60 * 99 + 30);
    let iv = h.intervals(now, 99 * 10 + 4, 99);
    assert_eq!(iv.len(), History::KEEP);
    assert!(iv[..60].iter().all(|u| u.requests == 10 && u.unauthorized == 1), "{iv:?}");
    assert_eq!(iv[60], Usage { start: 1_800_000_000 + 60 * 99, requests: 4, unauthorized: 0 });
    assert_eq!(iv[0].start, 1_800_000_000 + 60 * 39);
}
