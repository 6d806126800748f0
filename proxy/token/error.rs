//! Why a token source could not give a value. Every source returns [`SourceError`]; its text is
//! what the admin API's `last_error`, the log and `sidekey check` show, so it names the URL,
//! file, variable or command and the cause, never a secret: texts a server sent back pass
//! through [`SourceError::scrub`] before they leave a source that sent a secret.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use ::http::{StatusCode, Uri};

use crate::secret::{Secret, SecretError};

/// A token source's failure, by kind.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's own definition cannot be used (a URL that does not parse, say).
    #[error("{0}")]
    Config(String),
    /// A variable of sidekey's environment the source reads: `problem` is "is not set",
    /// "is empty" or "is not valid UTF-8".
    #[error("environment variable {var} {problem}")]
    Env { var: String, problem: &'static str },
    /// A token file that cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    FileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A token file larger than a token may be (`len` when its size was known up front).
    #[error("{}", too_large(path, *len, *limit))]
    FileTooLarge { path: PathBuf, len: Option<u64>, limit: u64 },
    /// A secret the source sends (a client secret, a header, a key, an identity token) that
    /// cannot be read: `what` names the key and where it points.
    #[error("{what}: {reason}")]
    Unreadable { what: String, reason: String },
    /// An identity token whose `exp` has passed: refused here rather than by the server.
    #[error(
        "{what}: the token expired at {} (is the projected token still being rotated?)",
        humantime::format_rfc3339_seconds(*at)
    )]
    IdentityExpired { what: String, at: SystemTime },
    /// A value that cannot be used as a token (empty, not UTF-8, not a header value).
    #[error("{what}: {source}")]
    Unusable {
        what: String,
        #[source]
        source: SecretError,
    },
    /// No connection, TLS refused, or the answer broke off.
    #[error("{url}: {cause}")]
    Unreachable { url: Uri, cause: String },
    /// No whole answer within the source's timeout.
    #[error("{url}: no answer within {}", humantime::format_duration(*after))]
    NoAnswer { url: Uri, after: Duration },
    /// The server answered with an error status; `detail` is its own error text, scrubbed.
    #[error("{by} answered {status}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused { by: String, status: StatusCode, detail: Option<String> },
    /// An answer (or a command's output) without a usable token in it.
    #[error("{0}")]
    Malformed(String),
    /// The token command could not be started, read or waited for.
    #[error("{context}: {source}")]
    Exec {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The token command did not finish within its timeout.
    #[error("{program} did not finish within {}", humantime::format_duration(*after))]
    ExecTimedOut { program: String, after: Duration },
    /// The token command exited with a failure.
    #[error("{program} exited with {status}")]
    ExecFailed { program: String, status: ExitStatus },
    /// The fresh value was refused by the `validate` endpoint.
    #[error("validation at {url} answered {status}, expected {expect}")]
    ValidationFailed { url: Uri, status: StatusCode, expect: StatusCode },
}

fn too_large(path: &std::path::Path, len: Option<u64>, limit: u64) -> String {
    match len {
        Some(len) => format!("{} is {len} bytes, larger than a token file may be ({limit})", path.display()),
        None => format!("{} is larger than a token file may be ({limit} bytes)", path.display()),
    }
}

impl SourceError {
    /// The error with every occurrence of each secret in a server's text replaced: a server's
    /// error text may quote what it was sent.
    pub fn scrub(self, secrets: &[&Secret]) -> SourceError {
        let clean = |s: String| scrub(s, secrets);
        match self {
            SourceError::Refused { by, status, detail } => {
                SourceError::Refused { by, status, detail: detail.map(clean) }
            }
            SourceError::Malformed(m) => SourceError::Malformed(clean(m)),
            SourceError::Unreachable { url, cause } => SourceError::Unreachable { url, cause: clean(cause) },
            other => other,
        }
    }
}

/// `message` with every occurrence of each secret replaced.
pub fn scrub(message: String, secrets: &[&Secret]) -> String {
    let mut out = message;
    for s in secrets {
        let v = s.expose();
        if v.len() >= 8 && out.contains(v) {
            out = out.replace(v, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_before() {
        let url: Uri = "http://127.0.0.1:8200/v1/secret/data/api".parse().unwrap();
        let cases: [(SourceError, &str); 6] = [
            (
                SourceError::Env { var: "API_TOKEN".into(), problem: "is not set" },
                "environment variable API_TOKEN is not set",
            ),
            (
                SourceError::Refused { by: url.to_string(), status: StatusCode::FORBIDDEN, detail: None },
                "http://127.0.0.1:8200/v1/secret/data/api answered 403 Forbidden",
            ),
            (
                SourceError::Refused {
                    by: "token endpoint http://idp/token".into(),
                    status: StatusCode::UNAUTHORIZED,
                    detail: Some("invalid_client".into()),
                },
                "token endpoint http://idp/token answered 401 Unauthorized: invalid_client",
            ),
            (
                SourceError::NoAnswer { url: url.clone(), after: Duration::from_secs(5) },
                "http://127.0.0.1:8200/v1/secret/data/api: no answer within 5s",
            ),
            (
                SourceError::FileTooLarge { path: "/s/t".into(), len: Some(70000), limit: 65536 },
                "/s/t is 70000 bytes, larger than a token file may be (65536)",
            ),
            (
                SourceError::ExecTimedOut { program: "get-token".into(), after: Duration::from_millis(1500) },
                "get-token did not finish within 1s 500ms",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn scrub_removes_secrets_from_messages() {
        let s = Secret::new("eyJhbGciOiJSUzI1NiJ9.payload.sig".into());
        assert_eq!(scrub("bad token eyJhbGciOiJSUzI1NiJ9.payload.sig here".into(), &[&s]), "bad token <redacted> here");
    }
}
