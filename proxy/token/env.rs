//! `source = "env"`: a variable of sidekey's own environment, read at start and on refresh.

use crate::config;
use crate::secret::Secret;

use super::{Fetched, SourceError};

#[derive(Debug, Clone)]
pub struct EnvSource {
    var: String,
    aws: bool,
}

/// The variables AWS SDKs read credentials from: (JSON field, variable, required).
const AWS_VARS: [(&str, &str, bool); 3] = [
    ("AccessKeyId", "AWS_ACCESS_KEY_ID", true),
    ("SecretAccessKey", "AWS_SECRET_ACCESS_KEY", true),
    ("SessionToken", "AWS_SESSION_TOKEN", false),
];

impl EnvSource {
    pub fn new(config: &config::EnvSource) -> EnvSource {
        EnvSource { var: config.var.clone(), aws: config.aws }
    }

    pub fn fetch(&self) -> Result<Fetched, SourceError> {
        if self.aws {
            return aws_credentials();
        }
        match std::env::var_os(&self.var) {
            None => Err(self.unusable("is not set")),
            Some(v) if v.is_empty() => Err(self.unusable("is empty")),
            Some(v) => match v.into_string() {
                Ok(s) => Ok(Fetched { secret: Secret::new(s), expires_at: None }),
                Err(_) => Err(self.unusable("is not valid UTF-8")),
            },
        }
    }

    fn unusable(&self, problem: &'static str) -> SourceError {
        SourceError::Env { var: self.var.clone(), problem }
    }
}

/// The AWS credential variables as the JSON form a route's SigV4 signer reads.
fn aws_credentials() -> Result<Fetched, SourceError> {
    let mut doc = serde_json::Map::new();
    for (field, var, required) in AWS_VARS {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                doc.insert(field.to_owned(), serde_json::Value::String(v));
            }
            _ if required => return Err(SourceError::Env { var: var.to_owned(), problem: "is not set" }),
            _ => {}
        }
    }
    let json = serde_json::to_string(&serde_json::Value::Object(doc))
        .map_err(|e| SourceError::Malformed(format!("AWS credentials: {e}")))?;
    Ok(Fetched { secret: Secret::new(json), expires_at: None })
}
