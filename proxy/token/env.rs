//! `source = "env"`: a variable of sidekey's own environment, read at start and on refresh.

use crate::config;
use crate::secret::Secret;

use super::Fetched;

#[derive(Debug, Clone)]
pub struct EnvSource {
    var: String,
}

impl EnvSource {
    pub fn new(config: &config::EnvSource) -> EnvSource {
        EnvSource { var: config.var.clone() }
    }

    pub fn fetch(&self) -> Result<Fetched, String> {
        match std::env::var_os(&self.var) {
            None => Err(format!("environment variable {} is not set", self.var)),
            Some(v) if v.is_empty() => Err(format!("environment variable {} is empty", self.var)),
            Some(v) => match v.into_string() {
                Ok(s) => Ok(Fetched { secret: Secret::new(s), expires_at: None }),
                Err(_) => Err(format!("environment variable {} is not valid UTF-8", self.var)),
            },
        }
    }
}
