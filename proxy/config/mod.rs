//! The configuration file: serde structs, then one validation pass over the whole.
//!
//! Loading is three steps. The text is parsed into a span-keeping document (`toml_edit`), so
//! every later error can name its line. Each section and each route and token is then
//! deserialized on its own (`serde_ignored` collects unknown keys, `serde_path_to_error` names
//! the failing key), so one bad entry does not hide the errors of the next. Finally the whole
//! is validated: references, duplicates, URLs, header names. Every error is reported, with
//! its key path and line, and none of them echoes a secret.
//!
//! Where things are: the model in `sections.rs` (the top-level sections), `route.rs`,
//! `token.rs` and `identity.rs` (the workload-identity sources); reading in `load.rs`,
//! validation in `validate.rs`; pure syntax in `template.rs`, `hostport.rs`, `paths.rs` and
//! `rules.rs` (allow rules, rates). This module: [`Config`], secret references, durations,
//! errors and the list of accepted keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml_edit::{Item, TableLike};

mod hostport;
pub mod identity;
mod load;
pub mod paths;
mod route;
pub mod rules;
mod sections;
pub mod template;
mod token;
mod validate;

pub use hostport::HostPort;
pub use identity::{AwsWebIdentitySource, JwtAlg, LoginConfig, PrivateKeyJwt, TokenExchangeSource, VaultJwtLogin};
use load::*;
pub use route::*;
use route::{default_format, default_header};
use sections::MAX_HEADER_BYTES;
pub use sections::*;
pub use token::*;
use token::{default_source_timeout, TokenCommon, TOKEN_COMMON_KEYS};
use validate::*;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub upstream: UpstreamDefaults,
    pub shutdown: Shutdown,
    /// `[audit]`: the tamper-evident log, if wanted.
    pub audit: Option<AuditConfig>,
    /// `[admin]`: who may use the admin API.
    pub admin: AdminConfig,
    /// `[limits]`: what a client connection may cost.
    pub limits: Limits,
    /// `[hardening]`: process-level protection of the secrets in memory.
    pub hardening: Hardening,
    /// `[intercept]`: HTTPS interception for clients that use `HTTPS_PROXY`, if wanted.
    pub intercept: Option<InterceptConfig>,
    /// `[log]`: what is logged besides events.
    pub log: LogConfig,
    /// Things that are valid but probably not what was meant (a rule that never matches).
    pub warnings: Vec<ConfigError>,
    pub routes: Vec<RouteConfig>,
    /// Token definitions by name, in name order.
    pub tokens: BTreeMap<String, TokenConfig>,
}

/// A reference to a secret held elsewhere: `{ env = "NAME" }` or `{ file = "/path" }`.
/// A literal string is refused without echoing it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "{{ env = {v:?} }}"),
            SecretRef::File(p) => write!(f, "{{ file = {p:?} }}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        const REF_ONLY: &str =
            "a secret must be a reference, { env = \"VAR\" } or { file = \"/path\" }; literal values are not allowed";
        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"VAR\" } or { file = \"/path\" }")
            }
            // Every non-table form is refused with a message that does not repeat the value.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
                Err(de::Error::custom(REF_ONLY))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let r = match key.as_str() {
                        "env" => SecretRef::Env(map.next_value()?),
                        "file" => SecretRef::File(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            return Err(de::Error::custom(format!(
                                "unknown key `{key}` in a secret reference; expected `env` or `file`"
                            )));
                        }
                    };
                    if found.replace(r).is_some() {
                        return Err(de::Error::custom("a secret reference takes exactly one of `env` or `file`"));
                    }
                }
                found.ok_or_else(|| de::Error::custom(REF_ONLY))
            }
        }
        d.deserialize_any(RefVisitor)
    }
}

impl SecretRef {
    /// Reads the referenced secret now. Errors name the reference, never the value.
    pub fn read(&self) -> Result<crate::secret::Secret, String> {
        match self {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(crate::secret::Secret::new(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(_) => Err(format!("environment variable {var} is not set")),
            },
            SecretRef::File(path) => {
                let raw = zeroize::Zeroizing::new(
                    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                );
                crate::secret::Secret::from_bytes_trimmed(raw).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Parses a humane duration (`"30s"`, `"5m"`, `"250ms"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"250ms\", \"30s\", \"5m\")"))
}

/// One problem in a config file: where (key path and line) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes[1].format` or `tokens.gh.path`; empty for the whole file.
    pub key: String,
    /// 1-based line, when the key (or its nearest parent) is written in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "{line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "{line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file, for messages; `None` for configs built from a string.
    pub file: Option<PathBuf>,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.file {
            Some(p) => writeln!(f, "{}: {n} error{} in config", p.display(), if n == 1 { "" } else { "s" })?,
            None => writeln!(f, "{n} error{} in config", if n == 1 { "" } else { "s" })?,
        }
        // `file:line: key: message`, the shape editors and CI annotators pick up.
        for e in &self.errors {
            match &self.file {
                Some(p) => writeln!(f, "{}:{e}", p.display())?,
                None => writeln!(f, "line {e}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file. Relative paths in it are taken from the file's
    /// directory, as the path was given (a ConfigMap's file is a symlink into `..data`; its
    /// neighbours are found beside the link, not beside its target).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, false)
    }

    /// [`Config::load`], and what `run` would refuse or warn about on this machine: an audit
    /// log that cannot be opened for appending, a token, CA or admin-token file that exists but
    /// cannot be read (a token file not there yet is a warning: it is loaded when it appears).
    pub fn load_checked(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, true)
    }

    fn load_with(path: &Path, files: bool) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(path.to_owned()),
            errors: vec![ConfigError { key: String::new(), line: None, message: format!("cannot read config: {e}") }],
        })?;
        let base = path.parent().filter(|d| !d.as_os_str().is_empty());
        Config::parse_in(&text, base, files).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses and validates config text (relative paths stay relative to the working directory).
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_in(text, None, false)
    }

    fn parse_in(text: &str, base: Option<&Path>, files: bool) -> Result<Config, ConfigErrors> {
        let mut cx = Loader::new(text)?;
        cx.base = base.map(Path::to_owned);
        cx.files = files;
        let config = cx.load();
        let mut errors = cx.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors { file: None, errors }),
        }
    }
}

/// The token names no route uses (a warning, not an error).
pub fn unused_tokens(config: &Config) -> Vec<&str> {
    let used: HashSet<String> = config.routes.iter().flat_map(RouteConfig::token_names).collect();
    config.tokens.keys().map(String::as_str).filter(|t| !used.contains(*t)).collect()
}

/// Every key the config file accepts, as dotted paths (`routes[].name`, `tokens.*.refresh`,
/// `tokens.<oauth2>.token_url` for keys of one source kind), read from the serde structs
/// themselves: the README's reference is checked against this list.
pub fn accepted_keys() -> Vec<String> {
    fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Names(Option<&'static [&'static str]>);
        struct Probe<'a>(&'a mut Names);
        impl<'de> Deserializer<'de> for Probe<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("probe"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 .0 = Some(fields);
                Err(de::Error::custom("probe"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
                unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let mut names = Names(None);
        let _ = T::deserialize(Probe(&mut names));
        names.0.expect("a struct")
    }
    let mut keys: Vec<String> = TOP_LEVEL_KEYS.iter().map(|k| (*k).to_owned()).collect();
    let mut add = |prefix: &str, names: &[&str]| keys.extend(names.iter().map(|n| format!("{prefix}.{n}")));
    add("listen", fields::<Listen>());
    add("upstream", fields::<UpstreamDefaults>());
    add("shutdown", fields::<Shutdown>());
    add("audit", fields::<AuditConfig>());
    add("admin", fields::<AdminConfig>());
    add("limits", fields::<Limits>());
    add("hardening", fields::<Hardening>());
    add("intercept", fields::<InterceptConfig>());
    add("log", fields::<LogConfig>());
    add("routes[]", fields::<RouteConfig>());
    add("tokens.*", &["source"]);
    add("tokens.*", fields::<TokenCommon>());
    add("tokens.*.validate", fields::<ValidateConfig>());
    add("tokens.*.propagation", fields::<PropagationConfig>());
    add("tokens.<env>", fields::<EnvSource>());
    add("tokens.<file>", fields::<FileSource>());
    add("tokens.<oauth2>", fields::<OAuth2Source>());
    add("tokens.<http>", fields::<HttpSource>());
    add("tokens.<exec>", fields::<ExecSource>());
    add("tokens.<http>.login", fields::<LoginConfig>());
    add("tokens.<http>.login.vault_jwt", fields::<VaultJwtLogin>());
    add("tokens.<oauth2>.private_key_jwt", fields::<PrivateKeyJwt>());
    add("tokens.<aws_web_identity>", fields::<AwsWebIdentitySource>());
    add("tokens.<token_exchange>", fields::<TokenExchangeSource>());
    keys
}

#[cfg(test)]
mod tests;
