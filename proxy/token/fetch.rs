//! The HTTP exchange the network sources and validation share: one request, a bounded
//! wait, a bounded body.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use crate::upstream::SourceClient;

use super::SourceError;

/// Responses from token endpoints and secret stores are small; anything larger is refused.
pub const MAX_BODY: usize = 1024 * 1024;

/// Sends `req` and reads the whole answer within `timeout`. Errors name the URL and the
/// cause, never a header or body of the request.
pub async fn exchange(
    client: &SourceClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), SourceError> {
    let url = req.uri().clone();
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| SourceError::Unreachable { url: url.clone(), cause: crate::error::error_chain(&e) })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| SourceError::Unreachable {
                url: url.clone(),
                cause: format!("reading the answer failed: {e}"),
            })?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(SourceError::NoAnswer { url, after: timeout }),
    }
}

/// A short, printable excerpt of a server's error text for an error message.
///
/// A word the cut would split is left out whole: the excerpt is scrubbed of secrets afterwards,
/// and a secret's first half, cut off from the rest, would no longer be recognised as one.
pub fn excerpt(s: &str) -> String {
    let mut chars = s.chars().filter(|c| !c.is_control());
    let mut clean: String = chars.by_ref().take(200).collect();
    if let Some(next) = chars.next() {
        if !next.is_whitespace() {
            let word = clean.trim_end_matches(|c: char| !c.is_whitespace()).len();
            clean.truncate(word);
        }
        clean.push('…');
    }
    clean
}

/// Parses an expiry given as seconds from now (a number) or an RFC 3339 time (a string).
pub fn parse_expiry(v: &serde_json::Value, now: SystemTime) -> Result<SystemTime, String> {
    match v {
        serde_json::Value::Number(n) => {
            let secs = n.as_f64().filter(|s| *s >= 0.0 && s.is_finite()).ok_or("expiry is not a positive number")?;
            Ok(now + Duration::from_secs_f64(secs))
        }
        serde_json::Value::String(s) => match s.parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(now + Duration::from_secs_f64(secs)),
            _ => humantime::parse_rfc3339_weak(s)
                .map_err(|e| format!("expiry {s:?} is neither seconds nor an RFC 3339 time: {e}")),
        },
        _ => Err("expiry is neither a number of seconds nor an RFC 3339 time".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_seconds_from_now_or_an_rfc3339_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_expiry(&serde_json::json!(60), now).unwrap(), now + Duration::from_secs(60));
        assert_eq!(parse_expiry(&serde_json::json!("90"), now).unwrap(), now + Duration::from_secs(90));
        assert_eq!(
            parse_expiry(&serde_json::json!("2027-01-15T08:00:00Z"), now).unwrap(),
            humantime::parse_rfc3339("2027-01-15T08:00:00Z").unwrap()
        );
        assert!(parse_expiry(&serde_json::json!(-5), now).is_err());
        assert!(parse_expiry(&serde_json::json!("tomorrow"), now).is_err());
        assert!(parse_expiry(&serde_json::json!(true), now).is_err());
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let long = format!("a\nb{}", "x".repeat(500));
        let e = excerpt(&long);
        // One word past the cut: left out whole.
        assert_eq!(e, "…");
        let words = format!("a\nb {}", "x ".repeat(300));
        let e = excerpt(&words);
        assert_eq!(e.chars().count(), 201);
        assert!(e.ends_with('…') && !e.contains('\n'));
    }

    #[test]
    fn a_secret_the_cut_would_split_is_left_out_whole() {
        let secret = crate::secret::Secret::new("s3cr3t-assertion-value-0123456789".into());
        let text = format!("{} invalid_grant for {}", "y".repeat(180), secret.expose());
        let shown = super::super::error::scrub(excerpt(&text), &[&secret]);
        assert!(!shown.contains("s3cr3t-as"), "{shown}");
        assert!(shown.ends_with("for …"), "{shown}");
    }
}
