//! Loading: the text parsed into a span-keeping document, each section deserialized on its
//! own, then the whole validated; every error with its key path and line.

use super::*;

/// One step of a key path.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Walks the parsed document and accumulates errors.
pub(super) struct Loader<'a> {
    pub(super) text: &'a str,
    pub(super) doc: toml_edit::Document<&'a str>,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
    /// The directory relative paths are taken from.
    pub(super) base: Option<PathBuf>,
    /// Also check the files `run` opens (see [`Config::load_checked`]).
    pub(super) files: bool,
}

pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin",
    "upstream",
    "limits",
    "hardening",
    "shutdown",
    "audit",
    "intercept",
    "log",
    "routes",
    "tokens",
];
pub(super) const TOKEN_SOURCES: &[&str] =
    &["env", "file", "oauth2", "http", "exec", "aws_web_identity", "token_exchange"];

impl<'a> Loader<'a> {
    pub(super) fn new(text: &'a str) -> Result<Self, ConfigErrors> {
        match toml_edit::Document::parse(text) {
            Ok(doc) => Ok(Loader { text, doc, errors: Vec::new(), warnings: Vec::new(), base: None, files: false }),
            Err(e) => {
                // The error's own Display quotes the offending line, which may hold a secret
                // someone pasted by mistake: report the message and position only.
                let line = e.span().map(|s| line_of(text, s.start));
                Err(ConfigErrors {
                    file: None,
                    errors: vec![ConfigError {
                        key: String::new(),
                        line,
                        message: format!("invalid TOML: {}", e.message().trim()),
                    }],
                })
            }
        }
    }

    pub(super) fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let line = self.line_of_path(path);
        self.errors.push(ConfigError { key: path_string(path), line, message: message.into() });
    }

    pub(super) fn warn(&mut self, path: &[Seg], message: impl Into<String>) {
        let line = self.line_of_path(path);
        self.warnings.push(ConfigError { key: path_string(path), line, message: message.into() });
    }

    /// With `files`: a `{ file = }` reference that exists must be readable (one not there yet
    /// is a warning: the token is fetched again later).
    pub(super) fn check_secret_file(&mut self, path: &[Seg], reference: &SecretRef) {
        if let (true, SecretRef::File(file)) = (self.files, reference) {
            match paths::readable(file) {
                Ok(true) => {}
                Ok(false) => self.warn(path, format!("{} does not exist yet", file.display())),
                Err(e) => self.error(path, e),
            }
        }
    }

    /// The line of the deepest node of `path` written in the file.
    pub(super) fn line_of_path(&self, path: &[Seg]) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut node = Node::Item(self.doc.as_item());
        for seg in path {
            let next = match (seg, node) {
                (Seg::Key(k), n) => n.table_like().and_then(|t| t.get_key_value(k)).map(|(key, item)| {
                    if let Some(s) = key.span().or_else(|| item.span()) {
                        best = Some(s.start);
                    }
                    Node::Item(item)
                }),
                (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => a.get(*i).map(|t| {
                    if let Some(s) = t.span() {
                        best = Some(s.start);
                    }
                    Node::Table(t)
                }),
                (Seg::Index(i), Node::Item(Item::Value(toml_edit::Value::Array(a)))) => a.get(*i).map(|v| {
                    if let Some(s) = v.span() {
                        best = Some(s.start);
                    }
                    Node::Value(v)
                }),
                (Seg::Index(i), Node::Value(toml_edit::Value::Array(a))) => a.get(*i).map(|v| {
                    if let Some(s) = v.span() {
                        best = Some(s.start);
                    }
                    Node::Value(v)
                }),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        best.map(|offset| line_of(self.text, offset))
    }

    /// Deserializes one value, recording its unknown keys and type errors under `path`.
    ///
    /// serde stops at the first bad field; to report the others too, the bad key is removed
    /// and the entry deserialized again (a removed required key then ends the entry quietly:
    /// its error is already reported). An entry that deserializes after removals is returned
    /// so the whole-config checks still see it; the recorded errors fail the load anyway.
    pub(super) fn section<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &[Seg],
        mut value: toml::Value,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        for attempt in 0..32 {
            let mut unknown = Vec::new();
            let result: Result<T, serde_path_to_error::Error<toml::de::Error>> = serde_path_to_error::deserialize(
                serde_ignored::Deserializer::new(value.clone(), &mut |p: serde_ignored::Path<'_>| {
                    unknown.push(ignored_segments(&p))
                }),
            );
            if attempt == 0 {
                for rel in unknown {
                    self.unknown_key(path, rel);
                }
            }
            let e = match result {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut rel = Vec::new();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => rel.push(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => rel.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { variant } => rel.push(Seg::Key(variant.clone())),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let message = e.into_inner().message().trim().to_owned();
            if removed.iter().any(|k| message.contains(&format!("`{k}`"))) {
                return None;
            }
            let mut full = path.to_vec();
            full.extend(rel.iter().cloned());
            self.error(&full, message);
            match (rel.first(), &mut value) {
                (Some(Seg::Key(k)), toml::Value::Table(t)) if t.contains_key(k) => {
                    t.remove(k);
                    removed.push(k.clone());
                }
                _ => return None,
            }
        }
        None
    }

    pub(super) fn unknown_key(&mut self, path: &[Seg], rel: Vec<Seg>) {
        let mut full = path.to_vec();
        full.extend(rel);
        let key = match full.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => String::new(),
        };
        let msg = if matches!(key.as_str(), "value" | "token" | "secret" | "password") && is_token_path(&full) {
            "token values are never written in the config; name where the value lives with `source`"
        } else {
            "unknown key"
        };
        self.error(&full, msg);
    }

    pub(super) fn load(&mut self) -> Option<Config> {
        let root: toml::Table = match toml::from_str(self.text) {
            Ok(t) => t,
            Err(e) => {
                let line = e.span().map(|s| line_of(self.text, s.start));
                self.errors.push(ConfigError {
                    key: String::new(),
                    line,
                    message: format!("invalid TOML: {}", e.message().trim()),
                });
                return None;
            }
        };
        for key in root.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                self.error(
                    &[Seg::Key(key.clone())],
                    format!("unknown key; expected one of {}", TOP_LEVEL_KEYS.join(", ")),
                );
            }
        }
        let mut root = root;
        if let Some(base) = self.base.clone() {
            paths::resolve(&mut root, &base);
        }
        let listen = match root.remove("listen") {
            Some(v) => self.section::<Listen>(&[Seg::Key("listen".into())], v),
            None => Some(Listen::default()),
        };
        let upstream = match root.remove("upstream") {
            Some(v) => self.section::<UpstreamDefaults>(&[Seg::Key("upstream".into())], v),
            None => Some(UpstreamDefaults::default()),
        };
        let shutdown = match root.remove("shutdown") {
            Some(v) => self.section::<Shutdown>(&[Seg::Key("shutdown".into())], v),
            None => Some(Shutdown::default()),
        };
        let audit = match root.remove("audit") {
            Some(v) => {
                let a = self.section::<AuditConfig>(&[Seg::Key("audit".into())], v);
                if let Some(a) = &a {
                    let at = |key: &str| [Seg::Key("audit".into()), Seg::Key(key.into())];
                    for (key, d) in [("summary_interval", a.summary_interval), ("anchor_interval", a.anchor_interval)] {
                        if d.is_zero() {
                            self.error(&at(key), "must be longer than zero");
                        }
                    }
                    if self.files {
                        if let Err(e) = paths::appendable(&a.path) {
                            self.error(&at("path"), e);
                        }
                    }
                }
                a.map(Some)
            }
            None => Some(None),
        };
        let log = match root.remove("log") {
            Some(v) => self.section::<LogConfig>(&[Seg::Key("log".into())], v),
            None => Some(LogConfig::default()),
        };
        let admin = match root.remove("admin") {
            Some(v) => self.section::<AdminConfig>(&[Seg::Key("admin".into())], v),
            None => Some(AdminConfig::default()),
        };
        let limits = match root.remove("limits") {
            Some(v) => self.section::<Limits>(&[Seg::Key("limits".into())], v),
            None => Some(Limits::default()),
        };
        let hardening = match root.remove("hardening") {
            Some(v) => self.section::<Hardening>(&[Seg::Key("hardening".into())], v),
            None => Some(Hardening::default()),
        };
        let intercept = match root.remove("intercept") {
            Some(v) => {
                let i = self.section::<InterceptConfig>(&[Seg::Key("intercept".into())], v);
                if let Some(i) = &i {
                    self.check_intercept(i);
                }
                i.map(Some)
            }
            None => Some(None),
        };

        let mut tokens = BTreeMap::new();
        let mut tokens_ok = true;
        // Names count as defined even when their definition has errors, so a route naming one
        // is not reported as well.
        let mut defined: HashSet<String> = HashSet::new();
        match root.remove("tokens") {
            Some(toml::Value::Table(t)) => {
                defined.extend(t.keys().cloned());
                for (name, value) in t {
                    match self.token(&name, value) {
                        Some(tc) => {
                            tokens.insert(name, tc);
                        }
                        None => tokens_ok = false,
                    }
                }
            }
            Some(_) => {
                self.error(&[Seg::Key("tokens".into())], "must be a table of token definitions: [tokens.NAME]");
                tokens_ok = false;
            }
            None => {}
        }

        let mut routes = Vec::new();
        let mut routes_ok = true;
        match root.remove("routes") {
            Some(toml::Value::Array(items)) => {
                for (i, value) in items.into_iter().enumerate() {
                    let path = [Seg::Key("routes".into()), Seg::Index(i)];
                    match self.section::<RouteConfig>(&path, value) {
                        Some(r) => routes.push((i, r)),
                        None => routes_ok = false,
                    }
                }
            }
            Some(_) => {
                self.error(&[Seg::Key("routes".into())], "must be an array of tables: [[routes]]");
                routes_ok = false;
            }
            None => {
                self.error(&[], "no routes: add at least one [[routes]] entry");
                routes_ok = false;
            }
        }

        self.validate_routes(&routes, &defined);
        if let (Some(l), Some(u)) = (&listen, &upstream) {
            if l.proxy == ProxyAddr::Tcp(l.admin) && l.admin.port() != 0 {
                self.error(&[Seg::Key("listen".into()), Seg::Key("admin".into())], "must differ from listen.proxy");
            }
            if let Some(ca) = &u.ca_file {
                self.check_ca_file(&[Seg::Key("upstream".into()), Seg::Key("ca_file".into())], ca);
            }
        }
        if let Some(l) = &listen {
            if !l.allow_non_loopback && !crate::safety::is_local_listener(&l.proxy.to_string()) {
                self.error(
                    &[Seg::Key("listen".into()), Seg::Key("proxy".into())],
                    format!(
                        "{} is not a loopback address: whoever can reach it can send requests with the routes' \
                         credentials. Listen on 127.0.0.1 (or a unix: socket); where other hosts must reach it (a \
                         container whose clients are outside its network namespace), set [listen] \
                         allow_non_loopback = true and restrict who can connect",
                        l.proxy
                    ),
                );
            }
        }
        if let Some(n) = listen.as_ref().and_then(|l| l.workers) {
            let max = MAX_WORKERS;
            if !(1..=max).contains(&n) {
                self.error(
                    &[Seg::Key("listen".into()), Seg::Key("workers".into())],
                    format!("must be between 1 and {max}"),
                );
            }
        }
        if let Some(reference) = admin.as_ref().and_then(|a| a.token.clone()) {
            self.check_secret_file(&[Seg::Key("admin".into()), Seg::Key("token".into())], &reference);
        }
        if let (Some(l), Some(a)) = (&listen, &admin) {
            if !l.admin.ip().is_loopback() && a.token.is_none() {
                self.error(
                    &[Seg::Key("listen".into()), Seg::Key("admin".into())],
                    format!(
                        "{} is not a loopback address: anyone who can reach it could read token status and force \
                         refreshes. Set [admin] token = {{ env = \"VAR\" }} or {{ file = \"/path\" }} (a bearer \
                         token the admin API then requires), or listen on 127.0.0.1",
                        l.admin
                    ),
                );
            }
        }
        if let Some(l) = &limits {
            self.check_limits(l);
        }
        if upstream.as_ref().is_some_and(|u| u.send_timeout.is_zero()) {
            self.error(&[Seg::Key("upstream".into()), Seg::Key("send_timeout".into())], "must be longer than zero");
        }
        for (i, h) in admin.iter().flat_map(|a| a.hosts.iter()).enumerate() {
            if h.is_empty() || check_host(h).is_err() || h.contains(':') {
                self.error(
                    &[Seg::Key("admin".into()), Seg::Key("hosts".into()), Seg::Index(i)],
                    "a host name without a port (e.g. \"sidekey.internal\")",
                );
            }
        }

        if !(routes_ok && tokens_ok) {
            return None;
        }
        Some(Config {
            listen: listen?,
            upstream: upstream?,
            shutdown: shutdown?,
            audit: audit?,
            admin: admin?,
            limits: limits?,
            hardening: hardening?,
            intercept: intercept?,
            log: log?,
            warnings: std::mem::take(&mut self.warnings),
            routes: routes.into_iter().map(|(_, r)| r).collect(),
            tokens,
        })
    }

    pub(super) fn token(&mut self, name: &str, value: toml::Value) -> Option<TokenConfig> {
        let path = vec![Seg::Key("tokens".into()), Seg::Key(name.to_owned())];
        if !valid_name(name) {
            self.error(&path, "token names use letters, digits, `-` and `_` only");
        }
        let toml::Value::Table(mut table) = value else {
            self.error(&path, "must be a table with a `source` key");
            return None;
        };
        let source = match table.remove("source") {
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                let mut p = path.clone();
                p.push(Seg::Key("source".into()));
                self.error(&p, format!("must be a string, one of {}", TOKEN_SOURCES.join(", ")));
                return None;
            }
            None => {
                self.error(&path, format!("missing key `source` (one of {})", TOKEN_SOURCES.join(", ")));
                return None;
            }
        };
        let mut common_table = toml::Table::new();
        for key in TOKEN_COMMON_KEYS {
            if let Some(v) = table.remove(*key) {
                common_table.insert((*key).to_owned(), v);
            }
        }
        let common: Option<TokenCommon> = self.section(&path, toml::Value::Table(common_table));
        let plaintext_ok = common.as_ref().is_some_and(|c| c.allow_plaintext);
        let rest = toml::Value::Table(table);
        let source = match source.as_str() {
            "env" => {
                let s: EnvSource = self.section(&path, rest)?;
                if s.aws && !s.var.is_empty() {
                    self.error(&child(&path, "var"), "aws = true reads the AWS_* variables; remove `var`");
                } else if !s.aws && s.var.is_empty() {
                    self.error(&child(&path, "var"), "missing or empty: the variable to read (or aws = true)");
                }
                SourceConfig::Env(s)
            }
            "file" => {
                let s: FileSource = self.section(&path, rest)?;
                if s.path.as_os_str().is_empty() {
                    self.error(&child(&path, "path"), "must not be empty");
                } else if self.files {
                    match paths::readable(&s.path) {
                        Ok(true) => {}
                        Ok(false) => self.warn(
                            &child(&path, "path"),
                            format!("{} does not exist yet; it is loaded when it appears", s.path.display()),
                        ),
                        Err(e) => self.error(&child(&path, "path"), e),
                    }
                }
                SourceConfig::File(s)
            }
            "oauth2" => {
                let s: OAuth2Source = self.section(&path, rest)?;
                if let Some(secret) = &s.client_secret {
                    self.check_secret_file(&child(&path, "client_secret"), secret);
                }
                if let Err(m) = check_url(&s.token_url) {
                    self.error(&child(&path, "token_url"), m);
                } else if !plaintext_ok {
                    self.check_plaintext(&child(&path, "token_url"), &s.token_url);
                }
                if s.client_id.is_empty() {
                    self.error(&child(&path, "client_id"), "must not be empty");
                }
                if let Some(ca) = &s.ca_file {
                    self.check_ca_file(&child(&path, "ca_file"), ca);
                }
                self.check_client_auth(&path, &s);
                SourceConfig::OAuth2(s)
            }
            "http" => {
                let s: HttpSource = self.section(&path, rest)?;
                for (name, reference) in &s.headers {
                    self.check_secret_file(&child(&child(&path, "headers"), name), reference);
                }
                if let Err(m) = check_url(&s.url) {
                    self.error(&child(&path, "url"), m);
                } else if !plaintext_ok {
                    self.check_plaintext(&child(&path, "url"), &s.url);
                }
                for (p, key) in std::iter::once((&s.pointer, "pointer"))
                    .chain(s.expires_pointer.iter().map(|p| (p, "expires_pointer")))
                {
                    if !(p.is_empty() || p.starts_with('/')) {
                        self.error(&child(&path, key), "a JSON pointer starts with `/` (e.g. \"/data/data/token\")");
                    }
                }
                for name in s.headers.keys() {
                    self.check_header_name(&child(&child(&path, "headers"), name), name);
                }
                if let Some(ca) = &s.ca_file {
                    self.check_ca_file(&child(&path, "ca_file"), ca);
                }
                if let Some(login) = &s.login {
                    self.check_login(&path, login);
                }
                SourceConfig::Http(s)
            }
            "aws_web_identity" => {
                let s = self.aws_web_identity(&path, rest)?;
                if let (Some(e), false) = (&s.sts_endpoint, plaintext_ok) {
                    self.check_plaintext(&child(&path, "sts_endpoint"), e);
                }
                SourceConfig::AwsWebIdentity(s)
            }
            "token_exchange" => {
                let s = self.token_exchange(&path, rest)?;
                if !plaintext_ok {
                    self.check_plaintext(&child(&path, "token_url"), &s.token_url);
                }
                SourceConfig::TokenExchange(s)
            }
            "exec" => {
                let s: ExecSource = self.section(&path, rest)?;
                if s.command.first().is_none_or(|c| c.is_empty()) {
                    self.error(&child(&path, "command"), "must name a program: [\"/path/to/program\", \"arg\", ...]");
                }
                SourceConfig::Exec(s)
            }
            other => {
                self.error(
                    &child(&path, "source"),
                    format!("unknown source {other:?}; expected one of {}", TOKEN_SOURCES.join(", ")),
                );
                return None;
            }
        };
        let common = common?;
        if let Some(p) = &common.propagation {
            if !(p.ratio > 0.0 && p.ratio <= 1.0) {
                self.error(&child(&child(&path, "propagation"), "ratio"), "must be above 0 and at most 1");
            }
            if p.window.is_zero() {
                self.error(&child(&child(&path, "propagation"), "window"), "must be longer than zero");
            }
        }
        if let Some(v) = &common.validate {
            let vpath = child(&path, "validate");
            if let Err(m) = check_url(&v.url) {
                self.error(&child(&vpath, "url"), m);
            } else if !plaintext_ok {
                self.check_plaintext(&child(&vpath, "url"), &v.url);
            }
            if !(100..=599).contains(&v.expect) {
                self.error(&child(&vpath, "expect"), "must be an HTTP status code");
            }
            self.check_header_name(&child(&vpath, "header"), &v.header);
            if !v.format.contains("{token}") {
                self.error(&child(&vpath, "format"), "must contain {token}");
            }
            if let Some(ca) = &v.ca_file {
                self.check_ca_file(&child(&vpath, "ca_file"), ca);
            }
        }
        let default_interval = match source {
            SourceConfig::Env(_) | SourceConfig::File(_) => None,
            _ => Some(Duration::from_secs(300)),
        };
        let mut retry = RetryConfig::default();
        if let Some(o) = common.overlap {
            retry.overlap = o;
        }
        if let Some(l) = common.retry_body_limit {
            retry.body_limit = l;
        }
        if let Some(methods) = &common.retry_methods {
            retry.methods.clear();
            for m in methods {
                match http::Method::from_bytes(m.as_bytes()) {
                    Ok(m) => retry.methods.push(m),
                    Err(_) => self.error(&child(&path, "retry_methods"), format!("{m:?} is not an HTTP method")),
                }
            }
        }
        Some(TokenConfig {
            source,
            refresh: RefreshConfig {
                interval: common.refresh.or(default_interval),
                before: common.refresh_before.unwrap_or_default(),
            },
            validate: common.validate,
            retry,
            propagation: common.propagation.clone().unwrap_or_default(),
            on_401: common.on_401.unwrap_or_default(),
            required: common.required.unwrap_or(true),
        })
    }

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

pub(super) fn child(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(key.to_owned()));
    p
}

pub(super) fn is_token_path(path: &[Seg]) -> bool {
    matches!(path.first(), Some(Seg::Key(k)) if k == "tokens")
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

#[derive(Clone, Copy)]
pub(super) enum Node<'d> {
    Item(&'d Item),
    Table(&'d toml_edit::Table),
    Value(&'d toml_edit::Value),
}

impl<'d> Node<'d> {
    pub(super) fn table_like(self) -> Option<&'d dyn TableLike> {
        match self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }
}

pub(super) fn ignored_segments(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut out = Vec::new();
    pub(super) fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
        match p {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    walk(p, &mut out);
    out
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}
