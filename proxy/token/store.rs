//! Every configured token, by name: built from the config, rebuilt on reload keeping the
//! tokens whose definition did not change, and loaded once at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, SourceConfig};

use super::refresher::ClientCache;
use super::Token;

/// Every configured token, by name and by index.
#[derive(Debug)]
pub struct TokenStore {
    tokens: Vec<Arc<Token>>,
    by_name: HashMap<String, usize>,
    /// The global CA file and connect timeout the network sources' clients were built with.
    upstream_key: (Option<PathBuf>, Duration),
}

/// The header formats each route registers with its token: (token name, format) -> index.
#[derive(Debug, Default)]
pub struct FormatRegistry {
    formats: HashMap<String, Vec<String>>,
}

impl FormatRegistry {
    /// Registers a format for a token (equal formats share one). A route finds its format's
    /// index on the token itself ([`Token::format_index`]), which stays valid across reloads.
    pub fn register(&mut self, token: &str, format: &str) {
        let list = self.formats.entry(token.to_owned()).or_default();
        if !list.iter().any(|f| f == format) {
            list.push(format.to_owned());
        }
    }
}

impl TokenStore {
    /// Builds the tokens of a validated config. No value is loaded yet: see [`TokenStore::load_all`].
    pub fn new(
        config: &Config,
        formats: FormatRegistry,
        audit: Option<crate::audit::Audit>,
    ) -> Result<TokenStore, String> {
        TokenStore::build(config, formats, None, audit).map(|(store, _)| store)
    }

    /// Builds the tokens of a reloaded config, keeping every token of `previous` whose
    /// definition is unchanged (its value, generation and schedule go on). Returns the store
    /// and the tokens that are new (to be loaded). The caller restarts the schedulers, so those
    /// of tokens not kept stop with the old set.
    pub fn rebuild(
        config: &Config,
        formats: FormatRegistry,
        previous: &TokenStore,
        audit: Option<crate::audit::Audit>,
    ) -> Result<(TokenStore, Vec<Arc<Token>>), String> {
        TokenStore::build(config, formats, Some(previous), audit)
    }

    fn build(
        config: &Config,
        mut formats: FormatRegistry,
        previous: Option<&TokenStore>,
        audit: Option<crate::audit::Audit>,
    ) -> Result<(TokenStore, Vec<Arc<Token>>), String> {
        let mut clients = ClientCache::new(audit, config.upstream.ca_file.clone(), config.upstream.connect_timeout);
        let same_network =
            previous.is_some_and(|p| p.upstream_key == (clients.global_ca.clone(), clients.connect_timeout));
        let mut tokens = Vec::new();
        let mut fresh = Vec::new();
        let mut by_name = HashMap::new();
        for (name, tc) in &config.tokens {
            let wanted = formats.formats.remove(name).unwrap_or_default();
            let kept = previous.and_then(|p| p.get(name)).filter(|t| {
                t.config == *tc
                    && (same_network
                        || matches!(tc.source, SourceConfig::Env(_) | SourceConfig::File(_)) && tc.validate.is_none())
            });
            let token = match kept {
                Some(t) => {
                    t.add_formats(&wanted).map_err(|e| format!("token {name}: {e}"))?;
                    t.clone()
                }
                None => {
                    let t =
                        Arc::new(Token::new(name, tc, wanted, &mut clients).map_err(|e| format!("token {name}: {e}"))?);
                    register_metrics(name);
                    fresh.push(t.clone());
                    t
                }
            };
            by_name.insert(name.clone(), tokens.len());
            tokens.push(token);
        }
        let upstream_key = (clients.global_ca.clone(), clients.connect_timeout);
        Ok((TokenStore { tokens, by_name, upstream_key }, fresh))
    }

    /// Loads the given tokens once, concurrently (see [`TokenStore::load_all`]).
    pub async fn load(tokens: &[Arc<Token>]) {
        let mut set = tokio::task::JoinSet::new();
        for t in tokens {
            let t = t.clone();
            set.spawn(async move { t.refresh().await });
        }
        while set.join_next().await.is_some() {}
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Token>> {
        self.by_name.get(name).map(|&i| &self.tokens[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.tokens.iter()
    }

    /// Loads every token once, concurrently. Failures are recorded, not fatal: those tokens
    /// answer 503 until a value arrives.
    pub async fn load_all(&self) {
        TokenStore::load(&self.tokens).await;
    }

    /// Names of tokens without a usable value.
    pub fn missing(&self) -> Vec<&str> {
        self.tokens.iter().filter(|t| !t.is_ready()).map(|t| t.name()).collect()
    }

    /// Names of the tokens `/readyz` waits for (`required`, the default) without a usable value.
    pub fn not_ready(&self) -> Vec<&str> {
        self.tokens.iter().filter(|t| t.config.required && !t.is_ready()).map(|t| t.name()).collect()
    }
}

/// Creates a token's series at zero, so that the first failure is an increase Prometheus can
/// see (`increase()` cannot tell a series born at 1 from one that was always 1).
fn register_metrics(name: &str) {
    let token = name.to_owned();
    metrics::gauge!("sidekey_token_ready", "token" => token.clone()).set(0.0);
    metrics::gauge!("sidekey_token_generation", "token" => token.clone()).set(0.0);
    metrics::counter!("sidekey_propagation_failures_total", "token" => token.clone()).increment(0);
    for result in ["success", "failure", "rejected"] {
        metrics::counter!("sidekey_token_rotations_total", "token" => token.clone(), "result" => result).increment(0);
    }
}
