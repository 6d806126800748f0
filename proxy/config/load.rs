//! Loading: the text parsed into a span-keeping document, each section deserialized on its
//! own, then the whole validated (`validate.rs`); every error with its key path and line.

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
}

pub(super) fn child(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(key.to_owned()));
    p
}

pub(super) fn is_token_path(path: &[Seg]) -> bool {
    matches!(path.first(), Some(Seg::Key(k)) if k == "tokens")
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
