//! Certificates and keys as files hold them: the trust roots for upstreams (the platform's,
//! plus a CA bundle), and a CA pair that signs leaves (the interception CA). Pure: used by
//! config validation, the upstream client and interception alike.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// How long a minted leaf is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Leaves and a generated CA start this far in the past, for clients whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A generated CA's lifetime (it lives only as long as the process anyway).
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Reads a PEM CA bundle; the error says what is wrong with which file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs: Vec<_> =
        iter.collect::<Result<_, _>>().map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The platform's trust roots, read once per process.
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let result = rustls_native_certs::load_native_certs();
        for e in &result.errors {
            tracing::debug!(error = %e, "skipping a platform root certificate");
        }
        result.certs
    })
}

pub fn root_store(extra: &[PathBuf]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let platform = platform_roots();
    if platform.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        roots.add_parsable_certificates(platform.iter().cloned());
    }
    for file in extra {
        for cert in load_ca_file(file)? {
            roots.add(cert).map_err(|e| format!("CA file {}: {e}", file.display()))?;
        }
    }
    Ok(roots)
}

/// The interception CA: its certificate, and the key that signs leaves (never printed).
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// SHA-256 of the key's PEM, to tell a changed key from an unchanged one on reload.
    key_digest: [u8; 32],
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("certificate", &self.fingerprint()).field("key", &"<redacted>").finish()
    }
}

impl Ca {
    /// A new CA: ECDSA P-256, valid for a year, allowed to sign leaves only (path length 0).
    pub fn generate() -> Result<Ca, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| format!("cannot make a CA key: {e}"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("cannot make a CA certificate: {e}"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, "sidekey interception CA");
        params.distinguished_name.push(DnType::OrganizationName, "sidekey");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(|e| format!("cannot make a CA certificate: {e}"))?;
        let key_digest = Sha256::digest(zeroize::Zeroizing::new(key.serialize_pem()).as_bytes()).into();
        Ok(Ca { cert_pem: cert.pem(), cert_der: cert.der().clone(), issuer: Issuer::new(params, key), key_digest })
    }

    /// A CA from a PEM certificate and PEM private key (PKCS#8, or SEC1 for EC keys). Checks
    /// that the key belongs to the certificate by verifying a leaf it signs. Errors never
    /// quote the key.
    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<Ca, String> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("the CA certificate is not a PEM certificate: {e}"))?;
        let key = KeyPair::from_pem(key_pem.expose())
            .map_err(|_| "the CA key is not a PEM private key (PKCS#8, or SEC1 for EC keys)".to_owned())?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| format!("the CA certificate cannot be used to sign: {e}"))?;
        let key_digest = Sha256::digest(key_pem.expose().as_bytes()).into();
        let ca = Ca { cert_pem: cert_to_pem(&cert_der), cert_der, issuer, key_digest };
        ca.check_pair()?;
        Ok(ca)
    }

    /// Whether a certificate and key read as PEM are this CA's (a reload that changed nothing).
    pub fn is_pair(&self, cert_pem: &str, key_pem: &Secret) -> bool {
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).is_ok_and(|d| d == self.cert_der)
            && <[u8; 32]>::from(Sha256::digest(key_pem.expose().as_bytes())) == self.key_digest
    }

    /// The key, PEM-encoded (for tests that write a pair to files).
    #[cfg(test)]
    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The certificate, PEM-encoded, as written to `ca_cert_out`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// `sha256:` and 12 hex digits of the certificate's hash (the certificate is public).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.cert_der.as_ref());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Mints a leaf for `host` (a DNS name or an IP address): its chain and key.
    pub fn mint(&self, host: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| format!("cannot make a leaf key: {e}"))?;
        let mut params = CertificateParams::new(vec![host.to_owned()])
            .map_err(|e| format!("cannot make a certificate for {host:?}: {e}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        let leaf = params.signed_by(&key, &self.issuer).map_err(|e| format!("cannot sign a leaf for {host:?}: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![leaf.der().clone(), self.cert_der.clone()], key))
    }

    /// Signs a leaf and verifies it against the certificate as the only root: fails when the
    /// key is not the certificate's, or the certificate cannot act as a CA.
    fn check_pair(&self) -> Result<(), String> {
        const PROBE: &str = "pair-check.sidekey.invalid";
        let (chain, _) = self.mint(PROBE)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).map_err(|e| format!("the CA certificate cannot be a trust root: {e}"))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("the CA certificate cannot be a trust root: {e}"))?;
        let name = ServerName::try_from(PROBE).expect("a valid DNS name");
        verifier
            .verify_server_cert(&chain[0], &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("ca_key does not belong to ca_cert, or the certificate is not a usable CA ({e})"))
    }
}

/// One certificate in PEM.
fn cert_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes a new CA pair to `dir` (`ca.crt`, and `ca.key` readable by the owner only) for
/// operators who keep the CA in a secret store. Refuses to overwrite either file.
pub fn init_files(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(format!("{} exists already; remove it or choose another directory", p.display()));
        }
    }
    let ca = Ca::generate()?;
    let key_pem = zeroize::Zeroizing::new(ca.issuer.key().serialize_pem());
    let mut key_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| format!("cannot create {}: {e}", key_path.display()))?;
    key_file.write_all(key_pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
    std::fs::write(&cert_path, ca.cert_pem()).map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier_for(ca: &Ca) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap()
    }

    #[test]
    fn minted_leaves_verify_against_the_ca_for_names_and_addresses() {
        let ca = Ca::generate().unwrap();
        let v = verifier_for(&ca);
        for host in ["api.example.com", "127.0.0.1", "::1"] {
            let (chain, _) = ca.mint(host).unwrap();
            let name = ServerName::try_from(host).unwrap();
            v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        // A leaf is for its host only.
        let (chain, _) = ca.mint("api.example.com").unwrap();
        let other = ServerName::try_from("evil.example.com").unwrap();
        assert!(v.verify_server_cert(&chain[0], &[], &other, &[], UnixTime::now()).is_err());
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_key_is_refused_without_quoting_it() {
        let a = Ca::generate().unwrap();
        let b = Ca::generate().unwrap();
        let a_key = Secret::new(a.key_pem());
        let b_key = Secret::new(b.key_pem());
        let loaded = Ca::from_pem(a.cert_pem(), &a_key).unwrap();
        assert_eq!(loaded.cert_der(), a.cert_der());
        // A leaf the loaded CA signs verifies against the original certificate.
        let (chain, _) = loaded.mint("x.example").unwrap();
        let name = ServerName::try_from("x.example").unwrap();
        verifier_for(&a).verify_server_cert(&chain[0], &[], &name, &[], UnixTime::now()).unwrap();

        let err = Ca::from_pem(a.cert_pem(), &b_key).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        // The private scalar of a P-256 PKCS#8 key is its bytes 36..68: base64 characters 48..88.
        let private = |k: &Secret| -> String {
            let body: String = k.expose().lines().filter(|l| !l.starts_with("-----")).collect();
            body[48..88].to_owned()
        };
        assert!(!err.contains(&private(&b_key)), "the error quotes the key: {err}");

        let err = Ca::from_pem(a.cert_pem(), &Secret::new("not a key".into())).unwrap_err();
        assert!(!err.contains("not a key\""), "{err}");
        assert!(Ca::from_pem("garbage", &a_key).is_err());
        let shown = format!("{loaded:?}");
        assert!(!shown.contains(&private(&a_key)) && !shown.contains(&private(&a_key)[..16]), "{shown}");
    }
}
