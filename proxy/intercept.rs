//! HTTPS interception for clients that only speak `https://` and honour `HTTPS_PROXY`.
//!
//! Such a client sends `CONNECT api.example.com:443` and then speaks TLS through the tunnel. For
//! a host a route names, sidekey answers the TLS itself with a leaf certificate for that host,
//! minted on the fly and signed by its own CA (which the app trusts), and serves the requests
//! inside exactly as routed requests: inject, forward over its own verified TLS connection to
//! the route's upstream, count. A `passthrough` host is tunnelled byte for byte (no
//! interception, no credentials); any other CONNECT is refused. Nothing here weakens upstream
//! verification: the inner requests go out through the route's ordinary client.
//!
//! The CA is a certificate and key read from files (watched, so a rotated pair is picked up
//! without a restart) or made at start with its key only in memory. Leaves are ECDSA P-256,
//! valid for a day, kept per host in a bounded cache, and minted afresh when the CA changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::Watcher;
use rustls::ServerConfig;
use tokio::sync::{mpsc, watch};

use crate::config::{HostPort, InterceptConfig, SecretRef};
use crate::pki::Ca;
use crate::secret::Secret;

/// A cached leaf older than this is minted again, so none served is close to expiry.
const LEAF_REMINT: Duration = Duration::from_secs(12 * 3600);
/// Changes to the CA files are folded into one reload after this long (a certificate and a
/// key written one after the other are read as a pair).
const CA_SETTLE: Duration = Duration::from_millis(100);
/// How often the CA files are checked where notifications are not available.
const CA_POLL: Duration = Duration::from_secs(1);

/// Writes the CA certificate where the app reads it: to a temporary file beside it, then
/// renamed over, so a reader never sees half a certificate.
fn write_cert_out(path: &Path, pem: &str) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut tmp, pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    tmp.persist(path).map_err(|e| format!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// A minted leaf, ready to terminate TLS with.
struct Leaf {
    tls: Arc<ServerConfig>,
    minted: Instant,
    /// The CA generation that signed it.
    generation: u64,
}

struct CaState {
    ca: Ca,
    generation: u64,
}

/// The interception state of a running proxy: the CA, the leaf cache, the passthrough list.
pub struct Intercept {
    ca: ArcSwap<CaState>,
    leaves: Mutex<HashMap<String, Leaf>>,
    max_leaves: usize,
    passthrough: Vec<HostPort>,
    config: InterceptConfig,
    minted: metrics::Counter,
    /// Where CA changes are recorded, when `[audit]` is on.
    audit: Option<crate::audit::Audit>,
    /// The CA files' stamps when last read, for the periodic check.
    stamps: Mutex<[Stamp; 2]>,
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept").field("ca", &self.ca.load().ca).field("passthrough", &self.passthrough).finish()
    }
}

impl Intercept {
    /// Loads (or makes) the CA and writes its certificate to `ca_cert_out`. The CA in use, and
    /// each change of it, is recorded in `audit` (by certificate fingerprint).
    pub fn new(config: &InterceptConfig, audit: Option<crate::audit::Audit>) -> Result<Intercept, String> {
        let stamps = ca_stamps(config);
        let ca = if config.generate { Ca::generate()? } else { load_ca(config)? };
        if let Some(out) = &config.ca_cert_out {
            write_cert_out(out, ca.cert_pem())?;
        }
        tracing::info!(
            ca = %ca.fingerprint(),
            generated = config.generate,
            ca_cert_out = config.ca_cert_out.as_ref().map(|p| p.display().to_string()),
            "HTTPS interception on"
        );
        if let Some(a) = &audit {
            let fields = crate::token::audit_fields([
                ("ca", ca.fingerprint().into()),
                ("generated", config.generate.into()),
                ("passthrough", config.passthrough.clone().into()),
            ]);
            a.event("intercept_ca_loaded", fields, true);
        }
        let passthrough = config.passthrough.iter().filter_map(|p| HostPort::parse(p, 443).ok()).collect();
        Ok(Intercept {
            ca: ArcSwap::from_pointee(CaState { ca, generation: 0 }),
            leaves: Mutex::new(HashMap::new()),
            max_leaves: config.max_leaf_certs.max(1),
            passthrough,
            config: config.clone(),
            minted: metrics::counter!("sidekey_intercept_leaf_certs_minted_total"),
            audit,
            stamps: Mutex::new(stamps),
        })
    }

    /// The CA in force.
    pub fn ca_fingerprint(&self) -> String {
        self.ca.load().ca.fingerprint()
    }

    /// The CA certificate in force, PEM-encoded.
    pub fn ca_cert_pem(&self) -> String {
        self.ca.load().ca.cert_pem().to_owned()
    }

    /// Whether CONNECT to `target` is tunnelled untouched.
    pub fn is_passthrough(&self, target: &HostPort) -> bool {
        self.passthrough.contains(target)
    }

    /// The TLS configuration that answers as `host`: a cached leaf, or one minted now.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let state = self.ca.load();
        if let Some(leaf) = lock(&self.leaves).get(host) {
            if leaf.generation == state.generation && leaf.minted.elapsed() < LEAF_REMINT {
                return Ok(leaf.tls.clone());
            }
        }
        // Minted outside the lock: two first CONNECTs to one host may both mint, which is harmless.
        let (chain, key) = state.ca.mint(host)?;
        let mut tls = ServerConfig::builder_with_provider(crate::pki::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("cannot use the leaf for {host:?}: {e}"))?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Arc::new(tls);
        self.minted.increment(1);
        let mut leaves = lock(&self.leaves);
        if leaves.len() >= self.max_leaves && !leaves.contains_key(host) {
            if let Some(oldest) = leaves.iter().min_by_key(|(_, l)| l.minted).map(|(h, _)| h.clone()) {
                leaves.remove(&oldest);
            }
        }
        leaves.insert(host.to_owned(), Leaf { tls: tls.clone(), minted: Instant::now(), generation: state.generation });
        Ok(tls)
    }

    /// For the admin API: the CA by fingerprint, where its certificate goes, the cache, the
    /// passthrough list. Nothing secret.
    pub fn status_json(&self) -> serde_json::Value {
        let state = self.ca.load();
        serde_json::json!({
            "ca": state.ca.fingerprint(),
            "ca_generation": state.generation,
            "generated": self.config.generate,
            "ca_cert_out": self.config.ca_cert_out.as_ref().map(|p| p.display().to_string()),
            "leaf_certs_cached": self.cached_leaves(),
            "max_leaf_certs": self.max_leaves,
            "passthrough": self.passthrough.iter().map(|p| format!("{}:{}", p.host, p.port)).collect::<Vec<_>>(),
        })
    }

    /// Leaves in the cache.
    pub fn cached_leaves(&self) -> usize {
        lock(&self.leaves).len()
    }

    /// Reads the CA files again; a changed, valid pair replaces the CA (new CONNECTs get leaves
    /// it signs; established sessions keep theirs) and is written to `ca_cert_out`. A pair that
    /// does not load keeps the CA in force. `Ok(true)` when the CA changed.
    pub fn reload_ca(&self) -> Result<bool, String> {
        if self.config.generate {
            return Ok(false);
        }
        *lock(&self.stamps) = ca_stamps(&self.config);
        let (cert, key) = match read_pair(&self.config) {
            Ok(pair) => pair,
            Err(e) => return Err(self.rejected(e)),
        };
        let current = self.ca.load();
        if current.ca.is_pair(cert.expose(), &key) {
            return Ok(false);
        }
        let ca = Ca::from_pem(cert.expose(), &key).map_err(|e| self.rejected(e))?;
        if let Some(out) = &self.config.ca_cert_out {
            write_cert_out(out, ca.cert_pem())?;
        }
        let (old, new) = (current.ca.fingerprint(), ca.fingerprint());
        self.ca.store(Arc::new(CaState { ca, generation: current.generation + 1 }));
        lock(&self.leaves).clear();
        tracing::info!(old = %old, new = %new, "interception CA rotated");
        if let Some(a) = &self.audit {
            a.event(
                "intercept_ca_rotated",
                crate::token::audit_fields([("old", old.into()), ("new", new.into())]),
                true,
            );
        }
        Ok(true)
    }

    /// The periodic check: reloads only when a CA file's identity, size or time changed since
    /// the last read (a notification reloads at once, whatever the stamps say).
    fn poll_ca(&self) -> Result<bool, String> {
        if *lock(&self.stamps) == ca_stamps(&self.config) {
            return Ok(false);
        }
        self.reload_ca()
    }

    /// Records a pair that does not load in the audit log; returns the error.
    fn rejected(&self, error: String) -> String {
        if let Some(a) = &self.audit {
            let fields =
                crate::token::audit_fields([("ca", self.ca_fingerprint().into()), ("error", error.clone().into())]);
            a.event("intercept_ca_rejected", fields, true);
        }
        error
    }

    /// Watches the CA files (when they are files) and reloads the CA when they change, until
    /// `stop` turns true.
    pub fn spawn_watcher(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
        let files: Vec<PathBuf> = [&self.config.ca_cert, &self.config.ca_key]
            .into_iter()
            .filter_map(|r| match r {
                Some(SecretRef::File(p)) => Some(p.clone()),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            return None;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let watched = files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(ev) = event {
                let relevant =
                    ev.paths.iter().any(|p| watched.contains(p) || p.file_name().is_some_and(|n| n == "..data"))
                        && !matches!(ev.kind, notify::EventKind::Access(_));
                if relevant {
                    let _ = tx.send(());
                }
            }
        });
        let watcher = watcher.ok().map(|mut w| {
            let mut dirs: Vec<&Path> = files.iter().filter_map(|p| p.parent()).collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the CA directory; checking it every second instead");
                }
            }
            w
        });
        let this = self.clone();
        Some(tokio::spawn(async move {
            let _watcher = watcher;
            let mut poll = tokio::time::interval(CA_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let notified = tokio::select! {
                    Some(()) = rx.recv() => {
                        // Fold the burst of events of one update into one read.
                        let settle = tokio::time::sleep(CA_SETTLE);
                        tokio::pin!(settle);
                        loop {
                            tokio::select! {
                                _ = &mut settle => break,
                                Some(()) = rx.recv() => {}
                            }
                        }
                        true
                    }
                    _ = poll.tick() => false,
                    _ = crate::shutdown::stopped(&mut stop) => break,
                };
                let this = this.clone();
                let reload = move || if notified { this.reload_ca() } else { this.poll_ca() };
                match tokio::task::spawn_blocking(reload).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot reload the interception CA; keeping the current one")
                    }
                    Err(e) => tracing::warn!(error = %e, "CA reload task failed"),
                }
            }
        }))
    }
}

fn read_pair(config: &InterceptConfig) -> Result<(Secret, Secret), String> {
    let (Some(cert), Some(key)) = (&config.ca_cert, &config.ca_key) else {
        return Err("[intercept] needs ca_cert and ca_key, or generate = true".into());
    };
    let cert = cert.read().map_err(|e| format!("ca_cert: {e}"))?;
    let key = key.read().map_err(|e| format!("ca_key: {e}"))?;
    Ok((cert, key))
}

fn load_ca(config: &InterceptConfig) -> Result<Ca, String> {
    let (cert, key) = read_pair(config)?;
    Ca::from_pem(cert.expose(), &key)
}

/// What identifies a file's content without reading it: device, inode, size and mtime of its
/// target (symlinks followed, so a Kubernetes `..data` swap shows).
type Stamp = Option<(u64, u64, u64, Option<std::time::SystemTime>)>;

fn ca_stamps(config: &InterceptConfig) -> [Stamp; 2] {
    use std::os::unix::fs::MetadataExt;
    [&config.ca_cert, &config.ca_key].map(|r| match r {
        Some(SecretRef::File(p)) => std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino(), m.len(), m.modified().ok())),
        _ => None,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_cache_is_bounded_and_follows_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let write_pair = |ca: &Ca| {
            std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
            std::fs::write(dir.path().join("ca.key"), ca.key_pem()).unwrap();
        };
        let first = Ca::generate().unwrap();
        write_pair(&first);
        let config = InterceptConfig {
            ca_cert: Some(SecretRef::File(dir.path().join("ca.crt"))),
            ca_key: Some(SecretRef::File(dir.path().join("ca.key"))),
            generate: false,
            ca_cert_out: Some(dir.path().join("out.crt")),
            passthrough: vec!["pypi.org".into()],
            max_leaf_certs: 2,
        };
        let i = Intercept::new(&config, None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("out.crt")).unwrap(), first.cert_pem());
        let a = i.server_config("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &i.server_config("a.example").unwrap()), "a cached leaf is reused");
        i.server_config("b.example").unwrap();
        i.server_config("c.example").unwrap();
        assert_eq!(i.cached_leaves(), 2);
        assert!(i.is_passthrough(&HostPort::parse("pypi.org:443", 443).unwrap()));
        assert!(!i.is_passthrough(&HostPort::parse("pypi.org:22", 443).unwrap()));

        assert!(!i.reload_ca().unwrap(), "unchanged files are no rotation");
        let second = Ca::generate().unwrap();
        write_pair(&second);
        assert!(i.reload_ca().unwrap());
        assert_eq!(i.ca_fingerprint(), second.fingerprint());
        assert_eq!(i.cached_leaves(), 0, "leaves of the old CA are dropped");
        assert_eq!(std::fs::read_to_string(dir.path().join("out.crt")).unwrap(), second.cert_pem());
        // A broken pair keeps the CA in force.
        std::fs::write(dir.path().join("ca.key"), first.key_pem()).unwrap();
        assert!(i.reload_ca().is_err());
        assert_eq!(i.ca_fingerprint(), second.fingerprint());
    }
}
