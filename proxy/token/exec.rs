//! `source = "exec"`: runs a command (argv, no shell) and reads the token from its stdout:
//! the whole output (one trailing newline trimmed), or JSON with `token` and an optional
//! `expires_in` (seconds) or `expires_at` (RFC 3339), or AWS `credential_process` JSON
//! (`AccessKeyId`, `SecretAccessKey`, ..., `Expiration`), kept whole for SigV4 signing. Its
//! stderr goes to the log.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use crate::config;
use crate::secret::Secret;

use super::fetch::{excerpt, parse_expiry};
use super::oauth2::redact_serde;
use super::{Fetched, SourceError};

/// The most of a command's output that is read.
const MAX_OUTPUT: u64 = 64 * 1024;

#[derive(Debug)]
pub struct ExecSource {
    command: Vec<String>,
    timeout: Duration,
}

#[derive(serde::Deserialize)]
struct JsonOutput {
    token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
}

impl ExecSource {
    pub fn new(c: &config::ExecSource) -> ExecSource {
        ExecSource { command: c.command.clone(), timeout: c.timeout }
    }

    pub async fn fetch(&self, token_name: &str) -> Result<Fetched, SourceError> {
        let program = &self.command[0];
        let mut child = tokio::process::Command::new(program)
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SourceError::Exec { context: format!("cannot run {program}"), source })?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let now = SystemTime::now();
        let run = async {
            let mut out = Zeroizing::new(Vec::with_capacity(MAX_OUTPUT as usize + 1));
            let mut err = Vec::new();
            let mut out_reader = (&mut stdout).take(MAX_OUTPUT + 1);
            let mut err_reader = (&mut stderr).take(MAX_OUTPUT);
            let (o, e) = tokio::join!(out_reader.read_to_end(&mut out), err_reader.read_to_end(&mut err));
            o.map_err(|source| SourceError::Exec { context: format!("reading {program}'s output"), source })?;
            let _ = e;
            let status = child
                .wait()
                .await
                .map_err(|source| SourceError::Exec { context: format!("waiting for {program}"), source })?;
            Ok::<_, SourceError>((status, out, err))
        };
        let (status, out, err) = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r?,
            Err(_) => return Err(SourceError::ExecTimedOut { program: program.clone(), after: self.timeout }),
        };
        for line in String::from_utf8_lossy(&err).lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!(token = token_name, command = %program, stderr = %excerpt(line), "token command wrote to stderr");
        }
        if !status.success() {
            return Err(SourceError::ExecFailed { program: program.clone(), status });
        }
        if out.len() as u64 > MAX_OUTPUT {
            return Err(SourceError::Malformed(format!("{program} wrote more than {MAX_OUTPUT} bytes")));
        }
        let trimmed_start = out.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(out.len());
        if out.get(trimmed_start) == Some(&b'{') {
            // AWS `credential_process` JSON: the whole document is the value (a route's
            // `sign.aws_sigv4` reads it), its `Expiration` the expiry.
            let aws = serde_json::from_slice::<serde_json::Value>(&out)
                .ok()
                .filter(crate::token::aws_credentials::is_credentials_json);
            if let Some(json) = aws {
                let expires_at = match crate::token::aws_credentials::parse_credentials(&String::from_utf8_lossy(&out))
                {
                    Ok(c) => c.expiration,
                    Err(e) => return Err(SourceError::Malformed(format!("{program}: {e}"))),
                };
                drop(json);
                let secret = Secret::from_bytes_trimmed(out)
                    .map_err(|source| SourceError::Unusable { what: format!("{program}'s output"), source })?;
                return Ok(Fetched { secret, expires_at });
            }
            let parsed: JsonOutput = serde_json::from_slice(&out).map_err(|e| {
                SourceError::Malformed(format!("{program} wrote JSON without a usable `token`: {}", redact_serde(&e)))
            })?;
            let expires_at = match (&parsed.expires_at, &parsed.expires_in) {
                // A number for `expires_at` is a Unix time; for `expires_in`, seconds from now.
                (Some(serde_json::Value::Number(n)), _) => {
                    let secs = n
                        .as_f64()
                        .filter(|s| *s >= 0.0)
                        .ok_or_else(|| SourceError::Malformed(format!("{program}: bad expires_at")))?;
                    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
                }
                (Some(v), _) | (None, Some(v)) => {
                    Some(parse_expiry(v, now).map_err(|e| SourceError::Malformed(format!("{program}: {e}")))?)
                }
                (None, None) => None,
            };
            if parsed.token.is_empty() {
                return Err(SourceError::Malformed(format!("{program} wrote an empty token")));
            }
            return Ok(Fetched { secret: Secret::new(parsed.token), expires_at });
        }
        let secret = Secret::from_bytes_trimmed(out)
            .map_err(|source| SourceError::Unusable { what: format!("{program}'s output"), source })?;
        Ok(Fetched { secret, expires_at: None })
    }
}
