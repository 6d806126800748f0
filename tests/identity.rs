//! Workload identity against real peers, through the real binary: a Vault JWT login on
//! OpenBao (login, renewal, a fresh login at max_ttl, a refused audience), STS
//! AssumeRoleWithWebIdentity on moto with signed calls carrying the session credentials,
//! private_key_jwt and client_assertion on oidc-provider, and RFC 8693 token exchange on the
//! test provider's own endpoint. Every wait is bounded; every secret the test knows of (JWTs,
//! client tokens, session tokens, keys) is searched for in the log, the audit log and the
//! admin API.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use support::servers::{Bao, Moto, Oidc, BAO_ROOT};
use support::*;

/// The real binary with a config file; its stderr (JSON log lines) kept for the secret search.
struct Sidecar {
    _child: tokio::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Sidecar {
    async fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Sidecar {
        let path = dir.join("sidekey.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .args(["run", "--log-format", "json", "-c"])
            .arg(&path)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let kept = log.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("sidekey listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = kept.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = bounded("sidekey to listen", rx)
            .await
            .unwrap_or_else(|_| panic!("sidekey exited:\n{}", log.lock().unwrap()));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
        Sidecar { _child: child, proxy: addr("proxy"), admin: addr("admin"), log }
    }

    async fn token(&self, name: &str) -> serde_json::Value {
        let all = get(&client(), &format!("http://{}/tokens", self.admin)).await.json();
        all.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {all}"))
    }

    async fn metrics(&self) -> String {
        get(&client(), &format!("http://{}/metrics", self.admin)).await.text()
    }

    async fn refresh(&self, name: &str) -> serde_json::Value {
        post(&client(), &format!("http://{}/tokens/{name}/refresh", self.admin)).await.json()
    }

    /// Everything an operator can see: the log so far, the admin API, the metrics.
    async fn visible(&self, audit: &Path) -> String {
        let c = client();
        let tokens = get(&c, &format!("http://{}/tokens", self.admin)).await.text();
        let metrics = self.metrics().await;
        let log = self.log.lock().unwrap().clone();
        format!("{log}\n{tokens}\n{metrics}\n{}", std::fs::read_to_string(audit).unwrap_or_default())
    }
}

/// Polls `check` every 100 ms until it gives a value, for at most `secs`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// An ES256 key pair: (private PKCS#8 PEM, public SPKI PEM).
fn ec_key() -> (String, String) {
    let k = rcgen::KeyPair::generate().unwrap();
    (k.serialize_pem(), k.public_key_pem())
}

/// An RS256 key pair from the openssl CLI: (private PEM, public PEM).
fn rsa_key(dir: &Path) -> (String, String) {
    let key = dir.join(format!("rsa-{}.pem", fastrand::u64(..)));
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian package openssl) generates the RSA key");
    assert!(ok.success());
    let public = std::process::Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).output().unwrap();
    (std::fs::read_to_string(&key).unwrap(), String::from_utf8(public.stdout).unwrap())
}

/// A JWT with `claims` (plus iat, and exp unless given) signed ES256 with `private_pem`.
fn jwt(private_pem: &str, mut claims: serde_json::Value) -> String {
    let now = unix_now();
    claims["iat"] = now.into();
    if claims.get("exp").is_none() {
        claims["exp"] = (now + 600).into();
    }
    let key = jsonwebtoken::EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &key).unwrap()
}

fn assert_hidden(visible: &str, secrets: &[(&str, &str)]) {
    for (what, s) in secrets {
        assert!(s.len() >= 8, "{what} is too short to search for");
        assert!(!visible.contains(s), "the {what} reached the log, the admin API, the metrics or the audit log");
    }
}

fn audit_events(audit: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Vault / OpenBao JWT login

async fn bao_call(bao: &Bao, method: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}/v1/{path}", bao.addr))
        .header("x-vault-token", BAO_ROOT)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let a = send(&client(), req).await;
    let text = a.text();
    (a.status.as_u16(), serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// JWT auth at `auth/jwt` trusting `public_pem`, a role `svc-a` for audience `vault` with the
/// given TTLs and a policy that reads `secret/data/api`.
async fn bao_jwt_auth(bao: &Bao, public_pem: &str, ttl: &str, max_ttl: &str) {
    bao_jwt_role(bao, public_pem, (ttl, max_ttl), "svc-a", "vault", "secret/data/api").await
}

/// The same with a role name, its bound audience and the KV path its policy reads.
async fn bao_jwt_role(bao: &Bao, public_pem: &str, ttls: (&str, &str), role: &str, audience: &str, kv: &str) {
    let calls = [
        ("sys/auth/jwt".to_owned(), serde_json::json!({"type": "jwt"})),
        (
            "auth/jwt/config".to_owned(),
            serde_json::json!({"jwt_validation_pubkeys": [public_pem], "bound_issuer": "https://k8s.test"}),
        ),
        (
            "sys/policies/acl/kv-read".to_owned(),
            serde_json::json!({"policy": format!("path \"{kv}\" {{ capabilities = [\"read\"] }}")}),
        ),
        (
            format!("auth/jwt/role/{role}"),
            serde_json::json!({
                "role_type": "jwt", "bound_audiences": [audience], "user_claim": "sub",
                "token_policies": ["kv-read"], "token_ttl": ttls.0, "token_max_ttl": ttls.1,
            }),
        ),
    ];
    for (path, body) in calls {
        let (status, answer) = bao_call(bao, "POST", &path, body).await;
        assert!((200..300).contains(&status), "bao {path}: {status} {answer}");
    }
}

/// The accessors of tokens issued by the JWT login, with their lookup data.
async fn jwt_tokens(bao: &Bao) -> Vec<serde_json::Value> {
    let (_, list) = bao_call(bao, "LIST", "auth/token/accessors", serde_json::Value::Null).await;
    let mut out = Vec::new();
    for a in list["data"]["keys"].as_array().cloned().unwrap_or_default() {
        let (status, look) =
            bao_call(bao, "POST", "auth/token/lookup-accessor", serde_json::json!({"accessor": a})).await;
        if status == 200 && look["data"]["path"] == "auth/jwt/login" {
            out.push(look["data"].clone());
        }
    }
    out
}

fn vault_config(bao: &Bao, up: &Upstream, jwt_file: &Path, audit: &Path) -> String {
    format!(
        r#"{LISTEN}
[audit]
path = {audit:?}

[[routes]]
name = "kv"
prefix = "/kv"
upstream = "{up}"
token = "kv"

[tokens.kv]
source = "http"
url = "http://{bao}/v1/secret/data/api"
pointer = "/data/data/token"
refresh = "1h"
login = {{ vault_jwt = {{ path = "auth/jwt", role = "svc-a", jwt = {{ file = {jwt_file:?} }} }} }}
"#,
        up = up.url,
        bao = bao.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_jwt_login_reads_kv_renews_its_token_and_logs_in_again_at_max_ttl() {
    let bao = Bao::start().await;
    let (private, public) = ec_key();
    bao_jwt_auth(&bao, &public, "3s", "6s").await;
    bao.put("api", serde_json::json!({"token": "kv-value-one-4f2a"})).await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("vault-token");
    let sa_jwt = jwt(
        &private,
        serde_json::json!({"iss": "https://k8s.test", "sub": "system:serviceaccount:default:svc-a", "aud": "vault"}),
    );
    std::fs::write(&jwt_file, &sa_jwt).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let up = Upstream::plain().await;
    let sk = Sidecar::start(dir.path(), &vault_config(&bao, &up, &jwt_file, &audit), &[]).await;
    let c = client();

    let a = get(&c, &format!("http://{}/kv/one", sk.proxy)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.find("/one").headers["authorization"], "Bearer kv-value-one-4f2a");
    let t = sk.token("kv").await;
    assert_eq!(t["identity"], "vault_jwt", "{t}");
    let login_expiry = t["login_expires_at"].as_str().unwrap_or_else(|| panic!("no login_expires_at: {t}")).to_owned();

    // Renewal: the login's token (its accessor) gets its TTL back up, and is not a new login.
    let first = jwt_tokens(&bao).await;
    assert_eq!(first.len(), 1, "one login: {first:?}");
    let accessor = first[0]["accessor"].as_str().unwrap().to_owned();
    let lowest = std::cell::Cell::new(first[0]["ttl"].as_i64().unwrap());
    let (bao_ref, lowest_ref, acc) = (&bao, &lowest, &accessor);
    until("the client token's renewal", 10, || async move {
        let (_, look) =
            bao_call(bao_ref, "POST", "auth/token/lookup-accessor", serde_json::json!({"accessor": acc})).await;
        let ttl = look["data"]["ttl"].as_i64()?;
        let renewed = look["data"]["last_renewal_time"].as_i64().is_some_and(|t| t > 0);
        if renewed && ttl > lowest_ref.get() {
            return Some(());
        }
        lowest_ref.set(lowest_ref.get().min(ttl));
        None
    })
    .await;
    assert_eq!(metric(&sk.metrics().await, "sidekey_token_logins_total{token=\"kv\",result=\"success\"}"), 1.0);
    assert_ne!(sk.token("kv").await["login_expires_at"].as_str().unwrap(), login_expiry, "renewal moves the expiry");

    // max_ttl: renewals stop extending the token, so sidekey logs in again before it lapses.
    until("a second login", 15, || async {
        (metric(&sk.metrics().await, "sidekey_token_logins_total{token=\"kv\",result=\"success\"}") >= 2.0)
            .then_some(())
    })
    .await;
    until("the first client token to expire", 15, || async {
        let (status, _) =
            bao_call(&bao, "POST", "auth/token/lookup-accessor", serde_json::json!({"accessor": accessor})).await;
        (status != 200).then_some(())
    })
    .await;
    // The KV read now goes with the new client token.
    bao.put("api", serde_json::json!({"token": "kv-value-two-8c1d"})).await;
    let r = sk.refresh("kv").await;
    assert_eq!(r["result"], "rotated", "{r}");
    assert_eq!(get(&c, &format!("http://{}/kv/two", sk.proxy)).await.status, 200);
    assert_eq!(up.find("/two").headers["authorization"], "Bearer kv-value-two-8c1d");

    let events = audit_events(&audit);
    let logins: Vec<_> = events.iter().filter(|e| e["event"] == "login").collect();
    assert!(
        logins.len() >= 2 && logins.iter().all(|e| e["identity"] == "vault_jwt" && e["token"] == "kv"),
        "{events:?}"
    );
    let visible = sk.visible(&audit).await;
    assert_hidden(&visible, &[("service-account JWT", &sa_jwt)]);
    // Client tokens: none of OpenBao's token shapes (s.*, hvs.*, b.*) anywhere.
    for word in visible.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.')) {
        let shaped = ["s.", "hvs.", "hvb.", "b."].iter().any(|p| word.strip_prefix(p).is_some_and(|r| r.len() >= 20));
        assert!(!shaped, "something shaped like a client token is visible: {word}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_expired_identity_token_is_reported_and_nothing_goes_out_without_a_token() {
    let bao = Bao::start().await;
    let (private, public) = ec_key();
    bao_jwt_auth(&bao, &public, "1h", "2h").await;
    bao.put("api", serde_json::json!({"token": "kv-value-9e7b"})).await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("vault-token");
    let claims = |aud: &str| serde_json::json!({"iss": "https://k8s.test", "sub": "system:serviceaccount:default:svc-a", "aud": aud});
    let wrong = jwt(&private, claims("not-vault"));
    std::fs::write(&jwt_file, &wrong).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let up = Upstream::plain().await;
    let sk = Sidecar::start(dir.path(), &vault_config(&bao, &up, &jwt_file, &audit), &[]).await;
    let c = client();

    let t = sk.token("kv").await;
    let error = t["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {t}"));
    assert!(error.contains("auth/jwt/login") && error.contains("400") && error.contains("aud"), "{error}");
    assert_eq!(t["state"], "unavailable");
    assert!(t["login_expires_at"].is_null(), "{t}");
    assert_eq!(get(&c, &format!("http://{}/kv/x", sk.proxy)).await.status, 503);
    assert!(up.seen().is_empty(), "a request went out without a token");
    assert!(metric(&sk.metrics().await, "sidekey_token_logins_total{token=\"kv\",result=\"failure\"}") >= 1.0);

    // Re-read at each login: an expired token is named as such, a missing file too.
    let expired = jwt(
        &private,
        serde_json::json!({"iss": "https://k8s.test", "sub": "x", "aud": "vault", "exp": unix_now() - 60}),
    );
    std::fs::write(&jwt_file, &expired).unwrap();
    let r = sk.refresh("kv").await;
    assert!(r["last_error"].as_str().is_some_and(|e| e.contains("expired at")), "{r}");
    std::fs::remove_file(&jwt_file).unwrap();
    let r = sk.refresh("kv").await;
    assert!(r["last_error"].as_str().is_some_and(|e| e.contains("cannot read") && e.contains("vault-token")), "{r}");

    // The kubelet writes a good one: the next login works.
    let good = jwt(&private, claims("vault"));
    std::fs::write(&jwt_file, &good).unwrap();
    let r = sk.refresh("kv").await;
    assert_eq!(r["result"], "rotated", "{r}");
    assert_eq!(get(&c, &format!("http://{}/kv/y", sk.proxy)).await.status, 200);
    assert_eq!(up.find("/y").headers["authorization"], "Bearer kv-value-9e7b");

    let events = audit_events(&audit);
    assert!(events.iter().any(|e| e["event"] == "login_failed" && e["identity"] == "vault_jwt"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "login"), "{events:?}");
    assert_hidden(
        &sk.visible(&audit).await,
        &[("wrong-audience JWT", &wrong), ("expired JWT", &expired), ("JWT", &good)],
    );
}

// ---------------------------------------------------------------------------------------------
// AWS STS AssumeRoleWithWebIdentity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_web_identity_credentials_sign_calls_and_are_refreshed_before_they_expire() {
    // No signature checks: AssumeRoleWithWebIdentity is an unsigned call (tests/sigv4.rs proves
    // the signatures against a checking moto).
    let moto = Moto::start(u32::MAX);
    let (private, _) = ec_key();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-token");
    let web_jwt = jwt(
        &private,
        serde_json::json!({"iss": "https://oidc.eks.test", "sub": "system:serviceaccount:default:svc-a", "aud": "sts.amazonaws.com"}),
    );
    std::fs::write(&token_file, &web_jwt).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let up = Upstream::plain().await;
    let config = format!(
        r#"{LISTEN}
[audit]
path = {audit:?}

[[routes]]
name = "sts"
prefix = "/sts"
upstream = "{moto}"
token = "aws"
sign = {{ aws_sigv4 = {{ service = "sts", region = "us-east-1" }} }}

[[routes]]
name = "irsa"
prefix = "/irsa"
upstream = "{moto}"
token = "irsa"
sign = {{ aws_sigv4 = {{ service = "sts", region = "us-east-1" }} }}

[[routes]]
name = "echo"
prefix = "/echo"
upstream = "{up}"
token = "aws"
sign = {{ aws_sigv4 = {{ service = "s3", region = "us-east-1" }} }}

[tokens.aws]
source = "aws_web_identity"
role_arn = "arn:aws:iam::123456789012:role/svc-a"
web_identity_token = {{ file = {token_file:?} }}
sts_endpoint = "{moto}"
# One-hour credentials refreshed 3 s after they are issued: the refresh ahead of Expiration.
refresh_before = "3597s"

[tokens.irsa]
source = "aws_web_identity"
sts_endpoint = "{moto}"
"#,
        moto = moto.url,
        up = up.url,
    );
    let token_path = token_file.to_str().unwrap();
    let sk = Sidecar::start(
        dir.path(),
        &config,
        &[("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/from-env"), ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path)],
    )
    .await;
    let c = client();
    let caller = |route: &'static str| {
        let c = c.clone();
        let proxy = sk.proxy;
        async move {
            let a = get(&c, &format!("http://{proxy}/{route}/?Action=GetCallerIdentity&Version=2011-06-15")).await;
            assert_eq!(a.status, 200, "{}", a.text());
            a.text()
        }
    };
    // moto answers with the role the session credentials belong to: the ASIA key was used.
    let who = caller("sts").await;
    assert!(who.contains("assumed-role/svc-a/sidekey-aws"), "{who}");
    let who = caller("irsa").await;
    assert!(who.contains("assumed-role/from-env/sidekey-irsa"), "the AWS_* variables at run time: {who}");

    let signed = |path: &'static str| {
        let c = c.clone();
        let (proxy, up) = (sk.proxy, &up);
        async move {
            assert_eq!(get(&c, &format!("http://{proxy}/echo{path}")).await.status, 200);
            let seen = up.find(path);
            let auth = seen.headers["authorization"].to_str().unwrap().to_owned();
            let key = auth.split("Credential=").nth(1).unwrap().split('/').next().unwrap().to_owned();
            let session = seen.headers["x-amz-security-token"].to_str().unwrap().to_owned();
            assert!(key.starts_with("ASIA"), "{auth}");
            assert!(auth.contains("x-amz-security-token"), "the session token is signed: {auth}");
            (key, session)
        }
    };
    let (key1, session1) = signed("/first").await;
    let t = sk.token("aws").await;
    assert_eq!(t["identity"], "aws_web_identity");
    assert!(t["login_expires_at"].is_null(), "{t}");
    let expires = humantime::parse_rfc3339_weak(t["expires_at"].as_str().unwrap().trim_end_matches('Z')).unwrap();
    assert!(expires > SystemTime::now() + Duration::from_secs(3000), "Expiration is the value's expiry: {t}");

    // Refreshed ahead of Expiration: new temporary credentials, used by the next call.
    until("the credentials' refresh", 15, || async { (sk.token("aws").await["generation"] == 2).then_some(()) }).await;
    let (key2, session2) = signed("/second").await;
    assert_ne!(key1, key2);
    assert_ne!(session1, session2);
    assert!(metric(&sk.metrics().await, "sidekey_token_logins_total{token=\"aws\",result=\"success\"}") >= 2.0);
    let events = audit_events(&audit);
    assert!(events.iter().any(|e| e["event"] == "login" && e["identity"] == "aws_web_identity"), "{events:?}");
    assert_hidden(
        &sk.visible(&audit).await,
        &[("web identity token", &web_jwt), ("session token", &session1), ("session token", &session2)],
    );
}

// ---------------------------------------------------------------------------------------------
// OAuth2 client authentication by JWT assertion, and token exchange

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_and_client_assertion_get_tokens_and_a_wrong_key_gets_invalid_client() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = rsa_key(dir.path());
    let (ec_private, ec_public) = ec_key();
    let (stranger, _) = ec_key();
    let clients = serde_json::json!([
        {"client_id": "svc-rsa", "token_endpoint_auth_method": "private_key_jwt", "public_key_pem": rsa_public},
        {"client_id": "svc-ec", "token_endpoint_auth_method": "private_key_jwt", "public_key_pem": ec_public},
        {"client_id": "svc-fed", "token_endpoint_auth_method": "private_key_jwt", "public_key_pem": ec_public},
    ]);
    let oidc = Oidc::start(&clients.to_string(), 60, 0);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let rsa_file = write("rsa.pem", &rsa_private);
    let ec_file = write("ec.pem", &ec_private);
    let stranger_file = write("stranger.pem", &stranger);
    // The federated token: issued elsewhere (here: by the test), read from a file.
    let federated = jwt(
        &ec_private,
        serde_json::json!({"iss": "svc-fed", "sub": "svc-fed", "aud": oidc.token_url, "jti": format!("{:x}", fastrand::u64(..))}),
    );
    let fed_file = write("federated.jwt", &federated);
    let audit = dir.path().join("audit.jsonl");
    let up = Upstream::plain().await;
    let mut config = format!("{LISTEN}\n[audit]\npath = {audit:?}\n");
    for (name, client, auth) in [
        ("rsa", "svc-rsa", format!("private_key_jwt = {{ key = {{ file = {rsa_file:?} }}, alg = \"RS256\" }}")),
        ("ec", "svc-ec", format!("private_key_jwt = {{ key = {{ file = {ec_file:?} }}, alg = \"ES256\" }}")),
        ("wrong", "svc-ec", format!("private_key_jwt = {{ key = {{ file = {stranger_file:?} }}, alg = \"ES256\" }}")),
        ("fed", "svc-fed", format!("client_assertion = {{ file = {fed_file:?} }}")),
    ] {
        config.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nupstream = \"{}\"\ntoken = \"{name}\"\n\n\
             [tokens.{name}]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"{client}\"\n{auth}\n\n",
            up.url, oidc.token_url
        ));
    }
    let sk = Sidecar::start(dir.path(), &config, &[]).await;
    let c = client();
    for (name, identity) in [("rsa", "private_key_jwt"), ("ec", "private_key_jwt"), ("fed", "client_assertion")] {
        let a = get(&c, &format!("http://{}/{name}/call", sk.proxy)).await;
        assert_eq!(a.status, 200, "{name}: {} {}", a.text(), sk.token(name).await);
        let bearer = up.last().headers["authorization"].to_str().unwrap().to_owned();
        assert_eq!(bearer.split('.').count(), 3, "{name}: oidc-provider's JWT access token: {bearer}");
        assert_eq!(sk.token(name).await["identity"], identity);
    }
    // A second signed assertion (fresh jti) is accepted: nothing is replayed.
    assert_eq!(sk.refresh("ec").await["result"], "rotated");

    let t = sk.token("wrong").await;
    let error = t["last_error"].as_str().unwrap_or_else(|| panic!("no error: {t}"));
    assert!(error.contains("401") && error.contains("invalid_client"), "{error}");
    assert_eq!(get(&c, &format!("http://{}/wrong/call", sk.proxy)).await.status, 503);
    assert!(metric(&sk.metrics().await, "sidekey_token_logins_total{token=\"wrong\",result=\"failure\"}") >= 1.0);
    let events = audit_events(&audit);
    assert!(events.iter().any(|e| e["event"] == "login_failed" && e["token"] == "wrong"), "{events:?}");
    let body_of = |p: &Path| std::fs::read_to_string(p).unwrap();
    let key_body = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    let visible = sk.visible(&audit).await;
    assert_hidden(
        &visible,
        &[
            ("federated assertion", &federated),
            ("RSA key", &key_body(&body_of(&rsa_file))[..40]),
            ("EC key", &key_body(&ec_private)[40..80]),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_sends_rfc_8693_parameters_and_uses_the_issued_token() {
    let (private, public) = ec_key();
    let oidc = Oidc::start_with(
        r#"[{"client_id":"unused","client_secret":"unused-secret"}]"#,
        30,
        &[("OIDC_EXCHANGE_SUBJECT_KEY", &public)],
    );
    let dir = tempfile::tempdir().unwrap();
    let subject = jwt(
        &private,
        serde_json::json!({"iss": "https://k8s.test", "sub": "system:serviceaccount:default:svc-a", "aud": "sts"}),
    );
    let actor = jwt(&private, serde_json::json!({"iss": "https://k8s.test", "sub": "actor", "aud": "sts"}));
    let subject_file = dir.path().join("subject.jwt");
    let actor_file = dir.path().join("actor.jwt");
    std::fs::write(&subject_file, &subject).unwrap();
    std::fs::write(&actor_file, &actor).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let up = Upstream::plain().await;
    let exchange_url = oidc.token_url.replace("/token", "/exchange");
    let config = format!(
        r#"{LISTEN}
[audit]
path = {audit:?}

[[routes]]
name = "api"
prefix = "/api"
upstream = "{up}"
token = "sts"

[tokens.sts]
source = "token_exchange"
token_url = "{exchange_url}"
subject_token = {{ file = {subject_file:?} }}
subject_token_type = "urn:ietf:params:oauth:token-type:jwt"
actor_token = {{ file = {actor_file:?} }}
actor_token_type = "urn:ietf:params:oauth:token-type:jwt"
audience = "api.example"
resource = "https://api.example/v1"
scope = "read"
requested_token_type = "urn:ietf:params:oauth:token-type:access_token"
"#,
        up = up.url,
    );
    let sk = Sidecar::start(dir.path(), &config, &[]).await;
    let c = client();
    assert_eq!(get(&c, &format!("http://{}/api/x", sk.proxy)).await.status, 200);
    let bearer = up.find("/x").headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
    let stats = oidc.stats().await;
    let last = &stats["last_exchange"];
    assert_eq!(last["issued_sha256"], sha256(bearer.as_bytes()), "the issued token is the one sent: {stats}");
    assert_eq!(last["subject"], "system:serviceaccount:default:svc-a");
    assert_eq!(last["audience"], "api.example");
    assert_eq!(last["resource"], "https://api.example/v1");
    assert_eq!(last["scope"], "read");
    assert_eq!(last["requested_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(last["actor_token_present"], true);
    assert_eq!(last["actor_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    let t = sk.token("sts").await;
    assert_eq!(t["identity"], "token_exchange");
    assert!(t["expires_at"].is_string(), "expires_in read: {t}");

    // A subject token the server cannot verify: its refusal, and the last good token stays.
    let (other, _) = ec_key();
    let forged = jwt(&other, serde_json::json!({"sub": "someone-else"}));
    std::fs::write(&subject_file, &forged).unwrap();
    let r = sk.refresh("sts").await;
    let error = r["last_error"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(error.contains("400") && error.contains("invalid_grant"), "{error}");
    assert_eq!(get(&c, &format!("http://{}/api/y", sk.proxy)).await.status, 200);
    assert_eq!(up.find("/y").headers["authorization"].to_str().unwrap(), format!("Bearer {bearer}"));
    assert_hidden(
        &sk.visible(&audit).await,
        &[
            ("subject token", &subject),
            ("actor token", &actor),
            ("forged subject token", &forged),
            ("issued token", &bearer),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes example without a static secret, rehearsed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_identity_example_runs_with_no_secret_but_the_admin_token() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/workload-identity.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_json::Value> =
        serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}")).clone();
    let pod = find("Deployment")["spec"]["template"]["spec"].clone();
    let sidekey = pod["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "sidekey").unwrap().clone();
    assert_eq!(pod["serviceAccountName"], find("ServiceAccount")["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], false, "no API token: the projected one only");
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = sidekey["volumeMounts"].as_array().unwrap();
    let mount_of =
        |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap()["mountPath"].as_str().unwrap().to_owned();
    // No Secret but the admin token's, nothing from a Secret in the environment.
    let secrets: Vec<&serde_json::Value> = volumes.iter().filter(|v| !v["secret"].is_null()).collect();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(secrets[0]["secret"]["secretName"], "sidekey-admin");
    assert!(!serde_json::to_string(&pod).unwrap().contains("secretKeyRef"));
    // The projected service-account token: audience, lifetime, where sidekey reads it.
    let projected = volumes.iter().find(|v| !v["projected"].is_null()).expect("a projected volume");
    let sat = &projected["projected"]["sources"][0]["serviceAccountToken"];
    let audience = sat["audience"].as_str().expect("an audience").to_owned();
    assert!(sat["expirationSeconds"].as_u64().is_some_and(|s| s >= 600), "{sat}");
    let jwt_in_pod = format!("{}/{}", mount_of(projected["name"].as_str().unwrap()), sat["path"].as_str().unwrap());
    let config_map = find("ConfigMap");
    assert_eq!(
        volumes.iter().find(|v| !v["configMap"].is_null()).unwrap()["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let mut config: toml::Table = config_map["data"]["sidekey.toml"].as_str().unwrap().parse().unwrap();
    let (name, token) =
        config["tokens"].as_table().unwrap().iter().next().map(|(n, t)| (n.clone(), t.clone())).unwrap();
    let login = &token["login"]["vault_jwt"];
    assert_eq!(login["jwt"]["file"].as_str().unwrap(), jwt_in_pod, "the login reads the projected token");
    let role = login["role"].as_str().unwrap().to_owned();
    let kv_url = token["url"].as_str().unwrap().to_owned();
    let kv_path = kv_url.split("/v1/").nth(1).unwrap().to_owned();

    // Run it: OpenBao stands in for Vault, with a role bound to the manifest's audience; the
    // test plays the kubelet, writing a token for that audience where the volume would be.
    let bao = Bao::start().await;
    let (private, public) = ec_key();
    bao_jwt_role(&bao, &public, ("15m", "1h"), &role, &audience, &kv_path).await;
    bao.put(kv_path.strip_prefix("secret/data/").unwrap(), serde_json::json!({"token": "orders-token-from-kv-51c3"}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("vault");
    let sa_jwt = jwt(
        &private,
        serde_json::json!({"iss": "https://k8s.test", "sub": "system:serviceaccount:my-app:my-app", "aud": audience}),
    );
    std::fs::write(&jwt_file, &sa_jwt).unwrap();
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, "rehearsal-admin-token\n").unwrap();
    let up = Upstream::plain().await;
    let listen = config["listen"].as_table_mut().unwrap();
    listen.insert("proxy".into(), "127.0.0.1:0".into());
    listen.insert("admin".into(), "127.0.0.1:0".into());
    config["admin"]["token"].as_table_mut().unwrap().insert("file".into(), admin_file.to_str().unwrap().into());
    config["routes"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap()
        .insert("upstream".into(), up.url.clone().into());
    let t = config["tokens"].as_table_mut().unwrap()[&name].as_table_mut().unwrap();
    t.insert("url".into(), format!("http://{}/v1/{kv_path}", bao.addr).into());
    t["login"]["vault_jwt"]["jwt"].as_table_mut().unwrap().insert("file".into(), jwt_file.to_str().unwrap().into());
    let sk = Sidecar::start(dir.path(), &toml::to_string(&config).unwrap(), &[]).await;
    let c = client();
    assert_eq!(get(&c, &format!("http://{}/readyz", sk.admin)).await.status, 200, "the readinessProbe passes");
    let prefix = config["routes"][0]["prefix"].as_str().unwrap();
    assert_eq!(get(&c, &format!("http://{}{prefix}/v1/orders", sk.proxy)).await.status, 200);
    assert_eq!(up.find("/v1/orders").headers["authorization"], "Bearer orders-token-from-kv-51c3");
    assert!(!sk.log.lock().unwrap().contains(&sa_jwt));
}
