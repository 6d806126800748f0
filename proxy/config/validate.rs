//! Validation past the types: each route's match, upstream, injection and least-privilege
//! settings, the intercept CA, the limits, header names and URLs; every problem placed with its
//! key path and line by the [`Loader`].

use super::*;

impl Loader<'_> {
    pub(super) fn validate_routes(&mut self, routes: &[(usize, RouteConfig)], tokens: &HashSet<String>) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut prefixes: HashMap<&str, usize> = HashMap::new();
        let mut hosts: HashMap<String, usize> = HashMap::new();
        for (i, r) in routes {
            let base = vec![Seg::Key("routes".into()), Seg::Index(*i)];
            if !valid_name(&r.name) {
                self.error(
                    &child(&base, "name"),
                    "route names use letters, digits, `-` and `_` only, and are not empty",
                );
            } else if let Some(first) = names.insert(&r.name, *i) {
                self.error(&child(&base, "name"), format!("duplicate route name {:?} (also routes[{first}])", r.name));
            }
            if r.prefix.is_none() && r.host.is_none() {
                self.error(&base, "a route needs a `prefix`, a `host`, or both");
            }
            if let Some(p) = &r.prefix {
                if let Err(m) = check_prefix(p) {
                    self.error(&child(&base, "prefix"), m);
                } else if let Some(first) = prefixes.insert(p, *i) {
                    self.error(&child(&base, "prefix"), format!("duplicate prefix {p:?} (also routes[{first}])"));
                }
            }
            if let Some(h) = &r.host {
                if let Err(m) = check_host(h) {
                    self.error(&child(&base, "host"), m);
                } else if let Some(first) = hosts.insert(h.to_ascii_lowercase(), *i) {
                    self.error(&child(&base, "host"), format!("duplicate host {h:?} (also routes[{first}])"));
                }
            }
            if let Err(m) = check_upstream(&r.upstream) {
                self.error(&child(&base, "upstream"), m);
            } else if !r.allow_plaintext && is_plaintext_off_host(&r.upstream) {
                self.error(
                    &child(&base, "upstream"),
                    "plain http to a host that is not loopback would send the token in clear; use https, or set allow_plaintext = true",
                );
            }
            self.check_injection(&base, r, tokens);
            if let Some(ca) = &r.ca_file {
                self.check_ca_file(&child(&base, "ca_file"), ca);
            }
            for (j, rule) in r.allow.iter().flatten().enumerate() {
                let mut path = child(&base, "allow");
                path.push(Seg::Index(j));
                match super::rules::AllowRule::parse(rule) {
                    Ok(_) => {}
                    Err(super::rules::RuleProblem::Invalid(m)) => self.error(&path, m),
                    Err(super::rules::RuleProblem::NeverMatches(m)) => {
                        let line = self.line_of_path(&path);
                        self.warnings.push(ConfigError {
                            key: path_string(&path),
                            line,
                            message: format!("never matches: {m}"),
                        });
                    }
                }
            }
            if let Some(rate) = &r.rate {
                if let Err(m) = super::rules::parse_rate(rate) {
                    self.error(&child(&base, "rate"), m);
                }
            }
            if r.burst == Some(0) {
                self.error(&child(&base, "burst"), "must be at least 1");
            }
            if r.burst.is_some() && r.rate.is_none() {
                self.error(&child(&base, "burst"), "has no effect without `rate`");
            }
            if r.max_in_flight == Some(0) {
                self.error(&child(&base, "max_in_flight"), "must be at least 1");
            }
            if r.allow_encoded_slash && r.allow.is_none() {
                self.error(&child(&base, "allow_encoded_slash"), "has no effect without `allow`");
            }
            if r.send_timeout.is_some_and(|d| d.is_zero()) {
                self.error(&child(&base, "send_timeout"), "must be longer than zero");
            }
        }
    }

    /// Exactly one injection form, with the tokens it names defined and its parts valid.
    pub(super) fn check_injection(&mut self, base: &[Seg], r: &RouteConfig, tokens: &HashSet<String>) {
        let mut forms: Vec<&str> = Vec::new();
        if r.header_name.is_some() || r.header_format.is_some() {
            forms.push(if r.header_name.is_some() { "header" } else { "format" });
        }
        for (key, present) in
            [("query", r.query.is_some()), ("headers", r.headers.is_some()), ("basic", r.basic.is_some())]
        {
            if present {
                forms.push(key);
            }
        }
        if forms.len() > 1 {
            self.error(
                &child(base, forms[1]),
                format!("a route injects one way: `{}` and `{}` cannot be combined", forms[0], forms[1]),
            );
            return;
        }
        let check_token = |this: &mut Self, path: &[Seg], name: &str| {
            if !tokens.contains(name) {
                this.error(path, format!("no token named {name:?} is defined under [tokens]"));
            }
        };
        let names_own = matches!(forms.first(), Some(&"headers") | Some(&"basic"));
        match (&r.token, names_own) {
            (Some(_), true) => self.error(
                &child(base, "token"),
                format!("`{}` names its tokens in {{token:NAME}} placeholders; remove `token`", forms[0]),
            ),
            (None, false) => self.error(base, "missing key `token` (the token to inject)"),
            (Some(t), false) => check_token(self, &child(base, "token"), t),
            (None, true) => {}
        }
        if let Some(h) = &r.header_name {
            self.check_header_name(&child(base, "header"), h);
        }
        if let Some(f) = &r.header_format {
            if !f.contains("{token}") {
                self.error(&child(base, "format"), "must contain {token}");
            } else if http::HeaderValue::from_str(&f.replace("{token}", "x")).is_err() {
                self.error(&child(base, "format"), "contains characters not allowed in a header value");
            }
        }
        if let Some(q) = &r.query {
            if q.is_empty() || q.bytes().any(|b| matches!(b, b'&' | b'=' | b'#' | b'?') || b.is_ascii_whitespace()) {
                self.error(&child(base, "query"), "a query parameter name, without `&`, `=`, `#`, `?` or spaces");
            }
        }
        if let Some(headers) = &r.headers {
            if headers.is_empty() {
                self.error(&child(base, "headers"), "names no header");
            }
            for (name, template) in headers {
                let mut path = child(base, "headers");
                path.push(Seg::Key(name.clone()));
                self.check_header_name(&path, name);
                match template::parse_template(template).and_then(|p| template::as_format(&p)) {
                    Err(m) => self.error(&path, m),
                    Ok((token, format)) => {
                        check_token(self, &path, &token);
                        if http::HeaderValue::from_str(&format.replace("{token}", "x")).is_err() {
                            self.error(&path, "contains characters not allowed in a header value");
                        }
                    }
                }
            }
        }
        if let Some(sign) = &r.sign {
            let mut path = child(base, "sign");
            path.push(Seg::Key("aws_sigv4".into()));
            let s = &sign.aws_sigv4;
            for (key, v) in [("service", &s.service), ("region", &s.region)] {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    self.error(&child(&path, key), "letters, digits and `-` (e.g. \"s3\", \"eu-west-1\")");
                }
            }
            if s.body_limit == 0 {
                self.error(&child(&path, "body_limit"), "must be at least 1");
            }
        }
        if let Some(b) = &r.basic {
            let mut named = 0;
            for (key, template) in [("username", &b.username), ("password", &b.password)] {
                let mut path = child(base, "basic");
                path.push(Seg::Key(key.into()));
                match template::parse_template(template) {
                    Err(m) => self.error(&path, m),
                    Ok(pieces) => {
                        for t in template::template_tokens(&pieces) {
                            named += 1;
                            check_token(self, &path, t);
                        }
                        let literal_colon =
                            pieces.iter().any(|p| matches!(p, template::Piece::Text(t) if t.contains(':')));
                        if key == "username" && literal_colon {
                            self.error(&path, "a Basic username cannot contain `:`");
                        }
                    }
                }
            }
            if named == 0 {
                self.error(&child(base, "basic"), "names no token: use {token:NAME} in username or password");
            }
        }
    }

    pub(super) fn check_intercept(&mut self, i: &InterceptConfig) {
        let path = [Seg::Key("intercept".into())];
        match (i.generate, &i.ca_cert, &i.ca_key) {
            (true, None, None) => {
                if i.ca_cert_out.is_none() {
                    self.error(
                        &child(&path, "ca_cert_out"),
                        "generate = true needs ca_cert_out: the path the generated CA certificate is written to, \
                         for the app to trust (its key never leaves sidekey's memory)",
                    );
                }
            }
            (true, _, _) => self.error(
                &child(&path, "generate"),
                "generate = true makes a CA at start; it cannot be combined with ca_cert and ca_key",
            ),
            (false, Some(cert), Some(key)) => {
                // Loaded now, so `sidekey check` reports a CA that cannot be used.
                match (cert.read(), key.read()) {
                    (Ok(cert), Ok(key)) => {
                        if let Err(e) = crate::pki::Ca::from_pem(cert.expose(), &key) {
                            self.error(&child(&path, "ca_key"), e);
                        }
                    }
                    (Err(e), _) => self.error(&child(&path, "ca_cert"), e),
                    (_, Err(e)) => self.error(&child(&path, "ca_key"), e),
                }
            }
            (false, _, _) => self.error(
                &path,
                "needs a CA: ca_cert and ca_key ({ file = \"...\" } each; `sidekey ca init --out DIR` makes a pair), \
                 or generate = true with ca_cert_out",
            ),
        }
        for (n, entry) in i.passthrough.iter().enumerate() {
            if let Err(e) = HostPort::parse(entry, 443) {
                let mut p = child(&path, "passthrough");
                p.push(Seg::Index(n));
                self.error(&p, e);
            }
        }
        if i.max_leaf_certs == 0 {
            self.error(&child(&path, "max_leaf_certs"), "must be at least 1");
        }
    }

    pub(super) fn check_limits(&mut self, l: &Limits) {
        let at = |key: &str| [Seg::Key("limits".into()), Seg::Key(key.into())];
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&l.max_header_bytes) {
            self.error(&at("max_header_bytes"), format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"));
        }
        if !(1..=10_000).contains(&l.max_headers) {
            self.error(&at("max_headers"), "must be between 1 and 10000");
        }
        if l.max_connections == 0 {
            self.error(&at("max_connections"), "must be at least 1");
        }
        if l.max_streams == 0 {
            self.error(&at("max_streams"), "must be at least 1");
        }
        for (key, d) in [("header_read_timeout", l.header_read_timeout), ("idle_timeout", l.idle_timeout)] {
            if d < Duration::from_millis(10) {
                self.error(&at(key), "must be at least 10ms");
            }
        }
    }

    /// A header name a secret is sent in: valid, and not one that frames the message or
    /// belongs to one hop (see [`crate::safety::framing_or_hop_header`]).
    pub(super) fn check_header_name(&mut self, path: &[Seg], name: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.error(path, "not a valid HTTP header name");
        } else if let Some(why) = crate::safety::framing_or_hop_header(name) {
            self.error(path, format!("{name} cannot carry a credential: {why}"));
        }
    }

    /// A URL a token's secret is sent to: refused over plain http off this host.
    pub(super) fn check_plaintext(&mut self, path: &[Seg], url: &str) {
        if crate::safety::is_plaintext_off_host(url) {
            self.error(
                path,
                "plain http to a host that is neither loopback nor link-local would send the secret in clear; \
                 use https, or set allow_plaintext = true on this token",
            );
        }
    }

    pub(super) fn check_ca_file(&mut self, path: &[Seg], file: &Path) {
        if let Err(e) = crate::pki::load_ca_file(file) {
            self.error(path, e);
        }
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub(super) fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if p.len() > 1 && p.ends_with('/') {
        return Err("must not end with `/` (prefixes match on segment boundaries)".into());
    }
    if p.contains(['?', '#', '%', '\\']) || p.split('/').any(|s| s == "." || s == "..") || p.contains("//") {
        return Err("must be a plain path: no `?`, `#`, `%`, `\\`, empty or dot segments".into());
    }
    if http::uri::PathAndQuery::try_from(p).is_err() {
        return Err("is not a valid URI path".into());
    }
    Ok(())
}

pub(super) fn check_host(h: &str) -> Result<(), String> {
    match http::uri::Authority::try_from(h) {
        Ok(a) if !h.contains('@') && !a.host().is_empty() => Ok(()),
        _ => Err("must be a host name, optionally with a port (e.g. \"api.github.com\")".into()),
    }
}

/// An `http://` URL whose host is not loopback (127.0.0.0/8, ::1, localhost).
pub(super) fn is_plaintext_off_host(u: &str) -> bool {
    let Ok(url) = url::Url::parse(u) else { return false };
    if url.scheme() != "http" {
        return false;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        Some(url::Host::Domain(d)) => !d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A URL sidekey fetches from (token endpoint, secret store, validation).
pub(super) fn check_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(())
}

pub(super) fn check_upstream(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme must be http or https, not {:?}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@); use a token".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
}
