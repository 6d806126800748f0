//! `sidekey demo`: the whole loop on loopback with nothing installed. A local upstream echoes
//! the headers it receives, a token file in a temp dir is rewritten every few seconds (the way
//! a secret volume or an issuer would rotate it), and the proxy sits between them.

use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
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

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(opts: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let token_path = dir.path().join("token");
    write_token(&token_path, 1)?;

    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));

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
source = "file"
path = {path:?}
"#,
            path = token_path.display().to_string()
        ))
    };
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
        "\nsidekey demo is running.\n\n  upstream (echoes what it receives): http://{echo_addr}\n  token file (rewritten every {}s):   {}\n\nTry:\n  curl -s http://{proxy}/echo/hello?x=1          # the echo shows the injected Authorization\n  curl -s -H 'Authorization: Bearer mine' http://{proxy}/echo/   # the client's value is replaced\n  curl -s http://{proxy}/nowhere                 # 404 no_route, nothing forwarded\n  curl -s http://{admin}/tokens                  # generation and fingerprint, never the value\n  curl -s -X POST http://{admin}/tokens/demo/refresh\n  curl -s http://{admin}/metrics | grep sidekey_\n\nDashboard: http://{admin}/\nCtrl-C stops it.\n",
        opts.rotate_every.as_secs_f64(),
        token_path.display(),
    );

    let mut ticker = tokio::time::interval(opts.rotate_every);
    ticker.tick().await;
    let mut n = 1u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                n += 1;
                if let Err(e) = write_token(&token_path, n) {
                    tracing::warn!(error = %e, "demo could not rewrite its token file");
                }
            }
            _ = crate::shutdown_signal() => break,
        }
    }
    tracing::info!("demo stopping");
    running.shutdown().await;
    drop(dir);
    Ok(())
}

/// Writes a fresh demo token by rename-over, the way secret managers replace files.
fn write_token(path: &Path, n: u64) -> std::io::Result<()> {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let digest = Sha256::digest(format!("{nanos}:{n}:{}", std::process::id()));
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("demo_{hex}\n"))?;
    std::fs::rename(&tmp, path)
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
