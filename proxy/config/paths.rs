//! The file paths a config names: relative ones taken from the config's directory, and the
//! checks `sidekey check` makes of the files `run` opens.
//!
//! Paths are rewritten in the parsed TOML before it is deserialized, so every later check and
//! every error message sees the path sidekey will really open.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Makes every relative path in the config relative to `base` (the config file's directory
/// as given): `path` of a file token and of `[audit]`, every `{ file = }` reference, every
/// `ca_file`, `ca_cert_out`, a `unix:` listener, and an exec `command[0]` that contains `/`
/// (a bare program name is looked up in `PATH`, as a shell would).
pub fn resolve(root: &mut toml::Table, base: &Path) {
    if let Some(toml::Value::Table(listen)) = root.get_mut("listen") {
        if let Some(toml::Value::String(s)) = listen.get_mut("proxy") {
            if let Some(p) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
                if let Some(joined) = joined(base, p) {
                    *s = format!("unix:{joined}");
                }
            }
        }
    }
    if let Some(toml::Value::Table(upstream)) = root.get_mut("upstream") {
        fix(upstream.get_mut("ca_file"), base);
    }
    if let Some(toml::Value::Table(audit)) = root.get_mut("audit") {
        fix(audit.get_mut("path"), base);
    }
    if let Some(toml::Value::Table(admin)) = root.get_mut("admin") {
        reference(admin.get_mut("token"), base);
    }
    if let Some(toml::Value::Table(intercept)) = root.get_mut("intercept") {
        reference(intercept.get_mut("ca_cert"), base);
        reference(intercept.get_mut("ca_key"), base);
        fix(intercept.get_mut("ca_cert_out"), base);
    }
    if let Some(toml::Value::Array(routes)) = root.get_mut("routes") {
        for route in routes.iter_mut().filter_map(toml::Value::as_table_mut) {
            fix(route.get_mut("ca_file"), base);
        }
    }
    if let Some(toml::Value::Table(tokens)) = root.get_mut("tokens") {
        for token in tokens.iter_mut().filter_map(|(_, t)| t.as_table_mut()) {
            let source = token.get("source").and_then(toml::Value::as_str).map(str::to_owned);
            if source.as_deref() == Some("file") {
                fix(token.get_mut("path"), base);
            }
            fix(token.get_mut("ca_file"), base);
            reference(token.get_mut("client_secret"), base);
            // Workload identity: the identity files each form reads at its login.
            for key in ["client_assertion", "web_identity_token", "subject_token", "actor_token"] {
                reference(token.get_mut(key), base);
            }
            if let Some(toml::Value::Table(pkj)) = token.get_mut("private_key_jwt") {
                reference(pkj.get_mut("key"), base);
            }
            if let Some(toml::Value::Table(login)) = token.get_mut("login") {
                if let Some(toml::Value::Table(vault)) = login.get_mut("vault_jwt") {
                    reference(vault.get_mut("jwt"), base);
                }
            }
            if let Some(toml::Value::Table(headers)) = token.get_mut("headers") {
                headers.iter_mut().for_each(|(_, r)| reference(Some(r), base));
            }
            if let Some(toml::Value::Table(validate)) = token.get_mut("validate") {
                fix(validate.get_mut("ca_file"), base);
            }
            if source.as_deref() == Some("exec") {
                if let Some(program) =
                    token.get_mut("command").and_then(toml::Value::as_array_mut).and_then(|c| c.first_mut())
                {
                    if program.as_str().is_some_and(|p| p.contains('/')) {
                        fix(Some(program), base);
                    }
                }
            }
        }
    }
}

/// A path, resolved.
fn fix(value: Option<&mut toml::Value>, base: &Path) {
    if let Some(toml::Value::String(s)) = value {
        if let Some(joined) = joined(base, s) {
            *s = joined;
        }
    }
}

/// A `{ file = "..." }` reference's path, resolved.
fn reference(value: Option<&mut toml::Value>, base: &Path) {
    fix(value.and_then(|v| v.as_table_mut()).and_then(|t| t.get_mut("file")), base);
}

/// `base/path` for a relative, non-empty `path`.
fn joined(base: &Path, path: &str) -> Option<String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return None;
    }
    // A path that is not UTF-8 cannot come from TOML text; the base (the -c argument) may be.
    base.join(p).into_os_string().into_string().ok()
}

/// Whether the audit log can be opened for appending, without creating it: an existing file
/// is opened (read and append, as the writer does), a missing one needs a directory that exists
/// and that sidekey may write to. sidekey creates no directories.
pub fn appendable(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::OpenOptions::new().read(true).append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir: PathBuf = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("cannot create audit log {shown}: {} is not a directory", dir.display())),
                Err(e) => {
                    return Err(format!(
                        "cannot create audit log {shown}: directory {}: {e} (sidekey creates no directories)",
                        dir.display()
                    ))
                }
            }
            rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).map_err(|e| {
                format!("cannot create audit log {shown}: directory {}: {}", dir.display(), std::io::Error::from(e))
            })
        }
        Err(e) => Err(format!("cannot open audit log {shown} for appending: {e}")),
    }
}

/// `Ok(true)` for a file that can be read, `Ok(false)` for one that does not exist (yet), an
/// error for one that exists and cannot be read. The file is opened, never read.
pub fn readable(path: &Path) -> Result<bool, String> {
    match std::fs::File::open(path) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => {
            Err(format!("cannot read {}: it is a directory", path.display()))
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_taken_from_the_base_and_absolute_ones_kept() {
        let text = r#"
[listen]
proxy = "unix:run/proxy.sock"
[upstream]
ca_file = "ca.pem"
[audit]
path = "/var/log/a.log"
[admin]
token = { file = "admin" }
[intercept]
ca_cert = { file = "ca/ca.crt" }
ca_key = { env = "KEY" }
ca_cert_out = "out.crt"
[[routes]]
ca_file = "r.pem"
[tokens.f]
source = "file"
path = "tok"
[tokens.e]
source = "exec"
command = ["bin/get", "arg/x"]
[tokens.p]
source = "exec"
command = ["get-token"]
[tokens.o]
source = "oauth2"
client_secret = { file = "secret" }
validate = { url = "https://x", ca_file = "v.pem" }
[tokens.h]
source = "http"
headers = { "X-Vault-Token" = { file = "vt" } }
login = { vault_jwt = { path = "auth/jwt", role = "r", jwt = { file = "id/vault" } } }
[tokens.w]
source = "aws_web_identity"
web_identity_token = { file = "id/eks" }
[tokens.a]
source = "oauth2"
client_assertion = { file = "id/idp" }
[tokens.k]
source = "oauth2"
private_key_jwt = { key = { file = "client.pem" }, alg = "RS256" }
[tokens.x]
source = "token_exchange"
subject_token = { file = "id/sts" }
actor_token = { file = "id/actor" }
"#;
        let mut root: toml::Table = toml::from_str(text).unwrap();
        resolve(&mut root, Path::new("conf.d"));
        let v: toml::Value = root.into();
        let at = |path: &[&str]| {
            let mut node = &v;
            for p in path {
                node = match p.parse::<usize>() {
                    Ok(i) => &node[i],
                    Err(_) => &node[*p],
                };
            }
            node.as_str().unwrap().to_owned()
        };
        assert_eq!(at(&["listen", "proxy"]), "unix:conf.d/run/proxy.sock");
        assert_eq!(at(&["upstream", "ca_file"]), "conf.d/ca.pem");
        assert_eq!(at(&["audit", "path"]), "/var/log/a.log");
        assert_eq!(at(&["admin", "token", "file"]), "conf.d/admin");
        assert_eq!(at(&["intercept", "ca_cert", "file"]), "conf.d/ca/ca.crt");
        assert_eq!(at(&["intercept", "ca_key", "env"]), "KEY");
        assert_eq!(at(&["intercept", "ca_cert_out"]), "conf.d/out.crt");
        assert_eq!(at(&["routes", "0", "ca_file"]), "conf.d/r.pem");
        assert_eq!(at(&["tokens", "f", "path"]), "conf.d/tok");
        assert_eq!(at(&["tokens", "e", "command", "0"]), "conf.d/bin/get");
        assert_eq!(at(&["tokens", "e", "command", "1"]), "arg/x", "arguments are the program's business");
        assert_eq!(at(&["tokens", "p", "command", "0"]), "get-token", "a bare name is looked up in PATH");
        assert_eq!(at(&["tokens", "o", "client_secret", "file"]), "conf.d/secret");
        assert_eq!(at(&["tokens", "o", "validate", "ca_file"]), "conf.d/v.pem");
        assert_eq!(at(&["tokens", "h", "headers", "X-Vault-Token", "file"]), "conf.d/vt");
        assert_eq!(at(&["tokens", "h", "login", "vault_jwt", "jwt", "file"]), "conf.d/id/vault");
        assert_eq!(at(&["tokens", "w", "web_identity_token", "file"]), "conf.d/id/eks");
        assert_eq!(at(&["tokens", "a", "client_assertion", "file"]), "conf.d/id/idp");
        assert_eq!(at(&["tokens", "k", "private_key_jwt", "key", "file"]), "conf.d/client.pem");
        assert_eq!(at(&["tokens", "x", "subject_token", "file"]), "conf.d/id/sts");
        assert_eq!(at(&["tokens", "x", "actor_token", "file"]), "conf.d/id/actor");
    }

    #[test]
    fn the_audit_log_check_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        assert_eq!(appendable(&log), Ok(()));
        assert!(!log.exists(), "checked without creating it");
        let missing = dir.path().join("no/such/dir/audit.log");
        let e = appendable(&missing).unwrap_err();
        assert!(e.contains("sidekey creates no directories"), "{e}");
        assert!(!dir.path().join("no").exists());
        std::fs::write(&log, "").unwrap();
        assert_eq!(appendable(&log), Ok(()));
    }
}
