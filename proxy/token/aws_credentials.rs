//! AWS credentials as a token's value holds them, in the forms AWS tools write: the JSON of
//! `credential_process` and of the container and instance metadata endpoints (`AccessKeyId`,
//! `SecretAccessKey`, `SessionToken` or `Token`, `Expiration`), or a shared-credentials file
//! (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token` under `[default]` or a
//! single profile). Sources read them to learn a value's expiry; the SigV4 signer
//! ([`crate::inject`]) reads them to sign.

use std::time::SystemTime;

use zeroize::Zeroizing;

/// AWS credentials read from a token's value. Never printed.
pub struct AwsCredentials {
    pub(crate) access_key_id: Zeroizing<String>,
    pub(crate) secret_access_key: Zeroizing<String>,
    pub(crate) session_token: Option<Zeroizing<String>>,
    /// From the JSON form's `Expiration`.
    pub expiration: Option<SystemTime>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials(<redacted>)")
    }
}

/// Whether `value` looks like the JSON form (so an `exec` or `http` source keeps it whole).
pub fn is_credentials_json(value: &serde_json::Value) -> bool {
    value.get("AccessKeyId").is_some_and(serde_json::Value::is_string)
}

/// Parses credentials from a token value. Errors name what is missing, never a value.
pub fn parse_credentials(value: &str) -> Result<AwsCredentials, String> {
    let trimmed = value.trim_start();
    if trimmed.starts_with('{') {
        let json: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|_| "AWS credentials: the JSON does not parse".to_owned())?;
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| json.get(*n).and_then(serde_json::Value::as_str))
                .map(|s| Zeroizing::new(s.to_owned()))
        };
        let access_key_id = field(&["AccessKeyId"]).ok_or("AWS credentials: no AccessKeyId in the JSON")?;
        let secret_access_key = field(&["SecretAccessKey"]).ok_or("AWS credentials: no SecretAccessKey in the JSON")?;
        let session_token = field(&["SessionToken", "Token"]).filter(|t| !t.is_empty());
        let expiration = match json.get("Expiration").and_then(serde_json::Value::as_str) {
            Some(t) => Some(
                humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
                    .or_else(|_| humantime::parse_rfc3339(t))
                    .map_err(|_| "AWS credentials: Expiration is not an RFC 3339 time".to_owned())?,
            ),
            None => None,
        };
        return Ok(AwsCredentials { access_key_id, secret_access_key, session_token, expiration });
    }
    // The shared-credentials (INI) form.
    // (profile name, its (key, value) lines)
    type Profile = (String, Vec<(String, Zeroizing<String>)>);
    let mut profiles: Vec<Profile> = Vec::new();
    for line in value.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profiles.push((name.trim().to_owned(), Vec::new()));
            continue;
        }
        let Some((key, v)) = line.split_once('=') else { continue };
        if profiles.is_empty() {
            profiles.push(("default".to_owned(), Vec::new()));
        }
        let entries = &mut profiles.last_mut().expect("a profile").1;
        entries.push((key.trim().to_ascii_lowercase(), Zeroizing::new(v.trim().to_owned())));
    }
    let profile = match profiles.iter().position(|(n, _)| n == "default") {
        Some(i) => &profiles[i].1,
        None if profiles.len() == 1 => &profiles[0].1,
        None => {
            return Err(
                "AWS credentials: neither JSON nor a shared-credentials file with a [default] or single profile".into(),
            )
        }
    };
    let get = |k: &str| profile.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Ok(AwsCredentials {
        access_key_id: get("aws_access_key_id").ok_or("AWS credentials: no aws_access_key_id")?,
        secret_access_key: get("aws_secret_access_key").ok_or("AWS credentials: no aws_secret_access_key")?,
        session_token: get("aws_session_token").filter(|t| !t.is_empty()),
        expiration: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_json_and_from_a_shared_credentials_file() {
        let c = parse_credentials(
            r#"{"Version":1,"AccessKeyId":"AKIDJSON","SecretAccessKey":"sk","SessionToken":"st","Expiration":"2030-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AKIDJSON", "sk"));
        assert_eq!(c.session_token.as_deref().map(String::as_str), Some("st"));
        assert_eq!(c.expiration, Some(humantime::parse_rfc3339("2030-01-02T03:04:05Z").unwrap()));
        // The metadata endpoints say `Token`.
        let c = parse_credentials(r#"{"AccessKeyId":"A","SecretAccessKey":"S","Token":"T"}"#).unwrap();
        assert_eq!(c.session_token.as_deref().map(String::as_str), Some("T"));

        let ini = "# comment\n[other]\naws_access_key_id = NO\naws_secret_access_key = NO\n\n[default]\n\
                   aws_access_key_id = AKIDINI\naws_secret_access_key = s/k+1\n";
        let c = parse_credentials(ini).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AKIDINI", "s/k+1"));
        assert!(c.session_token.is_none());
        let single =
            parse_credentials("[ci]\naws_access_key_id=A\naws_secret_access_key=B\naws_session_token=C\n").unwrap();
        assert_eq!(single.session_token.as_deref().map(String::as_str), Some("C"));

        for (bad, says) in [
            (r#"{"AccessKeyId":"A"}"#, "SecretAccessKey"),
            ("[a]\naws_access_key_id=x\n[b]\naws_access_key_id=y\n", "single profile"),
            ("[default]\naws_access_key_id=AKIDSECRETISH\n", "aws_secret_access_key"),
            ("{not json", "does not parse"),
        ] {
            let e = parse_credentials(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("AKIDSECRETISH"));
        }
        assert_eq!(format!("{:?}", parse_credentials(ini).unwrap()), "AwsCredentials(<redacted>)");
    }
}
