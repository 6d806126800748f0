//! `sidekey demo`: the whole loop on loopback with nothing installed. A local upstream echoes
//! the headers it receives, a local OAuth2 token issuer (client-credentials grant) hands out
//! tokens that live twice the rotation period, so sidekey refreshes them every period (at 50 %
//! of their lifetime), and the proxy sits between them with its admin dashboard.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::serve::{self, StartError};

/// Demo settings from the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Preferred proxy port; a free one is used if it is taken.
    pub port: u16,
    /// Preferred admin port; a free one is used if it is taken.
    pub admin_port: u16,
    pub rotate_every: Duration,
}

/// The demo issuer's client credentials (a demo: they are not secret).
const CLIENT_ID: &str = "demo-service";
const CLIENT_SECRET: &str = "demo-client-secret";
const SECRET_VAR: &str = "SIDEKEY_DEMO_CLIENT_SECRET";

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(opts: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));
    let issuer = TcpListener::bind("127.0.0.1:0").await?;
    let issuer_addr = issuer.local_addr()?;
    let lifetime = (opts.rotate_every * 2).max(Duration::from_secs(1));
    tokio::spawn(token_issuer(issuer, lifetime));
    // The client secret reaches sidekey the way it would in production: by reference.
    std::env::set_var(SECRET_VAR, CLIENT_SECRET);

    let config_for = |port: u16, admin: u16| {
        Config::parse(&format!(
            r#"
[listen]
proxy = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"

[[routes]]
name = "echo"
prefix = "/echo"
upstream = "http://{echo_addr}"
token = "demo"

[tokens.demo]
source = "oauth2"
token_url = "http://{issuer_addr}/token"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "{SECRET_VAR}" }}
scope = "echo"
refresh_before = "50%"
"#
        ))
    };
    let mut shutdown = crate::ShutdownSignal::listen();
    let running = match serve::start(config_for(opts.port, opts.admin_port)?).await {
        Ok(r) => r,
        Err(StartError::Bind { addr, .. }) => {
            tracing::info!(%addr, "preferred port taken; using free ports instead");
            serve::start(config_for(0, 0)?).await?
        }
        Err(e) => return Err(e.into()),
    };
    let proxy = running.proxy_addr;
    let admin = running.admin_addr;
    println!(
        "\nsidekey demo is running.\n\n  upstream (echoes what it receives): http://{echo_addr}\n  token issuer (OAuth2, tokens live {}s, rotated every {}s): http://{issuer_addr}/token\n\nTry:\n  curl -s http://{proxy}/echo/hello?x=1          # the echo shows the injected Authorization\n  curl -s -H 'Authorization: Bearer mine' http://{proxy}/echo/   # the client's value is replaced\n  curl -s http://{proxy}/nowhere                 # 404 no_route, nothing forwarded\n  curl -s http://{admin}/tokens                  # generation and fingerprint, never the value\n  curl -s -X POST http://{admin}/tokens/demo/refresh\n  curl -s http://{admin}/metrics | grep sidekey_\n\nDashboard: http://{admin}/\nCtrl-C stops it.\n",
        lifetime.as_secs_f64(),
        opts.rotate_every.as_secs_f64(),
    );
    shutdown.recv().await;
    tracing::info!("demo stopping");
    running.shutdown().await;
    Ok(())
}

/// The demo's identity provider: the client-credentials grant at `/token`, checking the
/// client's Basic credentials, each answer a fresh random token.
async fn token_issuer(listener: TcpListener, lifetime: Duration) {
    let issued = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let issued = issued.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let issued = issued.clone();
                async move { Ok::<_, Infallible>(issue(&req, &issued, lifetime)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn issue(req: &Request<Incoming>, issued: &AtomicU64, lifetime: Duration) -> Response<Full<Bytes>> {
    use base64::Engine;
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    let authorized =
        req.headers().get(http::header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let (status, body) = if req.uri().path() != "/token" || req.method() != http::Method::POST {
        (StatusCode::NOT_FOUND, serde_json::json!({ "error": "not_found" }))
    } else if !authorized {
        (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "invalid_client", "error_description": "unknown client credentials" }),
        )
    } else {
        let n = issued.fetch_add(1, Ordering::Relaxed) + 1;
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let digest = Sha256::digest(format!("{nanos}:{n}:{}", std::process::id()));
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        (
            StatusCode::OK,
            serde_json::json!({ "access_token": format!("demo_{hex}"), "token_type": "Bearer", "expires_in": lifetime.as_secs_f64() }),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// The demo upstream: answers every request with the method, path and headers it received.
pub async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(&req)) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())))
        .collect();
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    let mut resp =
        Response::new(Full::new(Bytes::from(serde_json::to_string_pretty(&body).unwrap_or_default() + "\n")));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}
