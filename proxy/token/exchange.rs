//! `source = "token_exchange"`: OAuth 2.0 Token Exchange (RFC 8693). The subject token (and
//! the actor token, if any) is read at each exchange; the answer's `access_token` and
//! `expires_in` are handled as any OAuth2 token's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Uri;

use crate::config::{self, SecretRef};
use crate::upstream::SourceClient;

use super::fetch::exchange;
use super::identity::{read_identity_token, Logins};
use super::oauth2::{token_answer, Form};
use super::{Fetched, SourceError};

/// RFC 8693 section 2.1.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub struct TokenExchangeSource {
    token_url: Uri,
    subject_token: SecretRef,
    actor_token: Option<SecretRef>,
    /// The form parameters besides the tokens: grant_type, the token types, audience,
    /// resource, scope, requested_token_type.
    params: Vec<(&'static str, String)>,
    client: SourceClient,
    timeout: Duration,
    logins: Arc<Logins>,
}

impl std::fmt::Debug for TokenExchangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeSource")
            .field("token_url", &self.token_url)
            .field("subject_token", &self.subject_token)
            .finish_non_exhaustive()
    }
}

impl TokenExchangeSource {
    pub fn new(
        c: &config::TokenExchangeSource,
        client: SourceClient,
        logins: Arc<Logins>,
    ) -> Result<TokenExchangeSource, SourceError> {
        let mut params =
            vec![("grant_type", GRANT_TYPE.to_owned()), ("subject_token_type", c.subject_token_type.clone())];
        let optional = [
            ("actor_token_type", &c.actor_token_type),
            ("audience", &c.audience),
            ("resource", &c.resource),
            ("scope", &c.scope),
            ("requested_token_type", &c.requested_token_type),
        ];
        params.extend(optional.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
        Ok(TokenExchangeSource {
            token_url: c.token_url.parse().map_err(|e| SourceError::Config(format!("token_url: {e}")))?,
            subject_token: c.subject_token.clone(),
            actor_token: c.actor_token.clone(),
            params,
            client,
            timeout: c.timeout,
            logins,
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let result = self.exchange().await;
        match &result {
            Ok(_) => self.logins.succeeded(None, false),
            Err(e) => self.logins.failed(&e.to_string()),
        }
        result
    }

    async fn exchange(&self) -> Result<Fetched, SourceError> {
        let subject = read_identity_token("subject_token", &self.subject_token)?;
        let actor = match &self.actor_token {
            Some(r) => Some(read_identity_token("actor_token", r)?),
            None => None,
        };
        let mut form = Form::with_capacity(
            self.params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + subject.expose().len()
                + actor.as_ref().map_or(0, |a| a.expose().len())
                + 32,
        );
        for (k, v) in &self.params {
            form.append(k, v);
        }
        form.append("subject_token", subject.expose());
        if let Some(a) = &actor {
            form.append("actor_token", a.expose());
        }
        let req = form.post(&self.token_url, Some("application/json"))?;
        let now = SystemTime::now();
        let secrets: Vec<&crate::secret::Secret> = std::iter::once(&subject).chain(actor.as_ref()).collect();
        let (status, bytes) = exchange(&self.client, req, self.timeout).await.map_err(|e| e.scrub(&secrets))?;
        token_answer(&self.token_url, status, &bytes, now).map_err(|e| e.scrub(&secrets))
    }
}
