//! sidekey embedded in another Rust program: start it from config text, use it, stop it.
//!
//! `EXAMPLE_TOKEN=abc cargo run --example embedded` then, while it runs,
//! `curl -s http://127.0.0.1:18080/echo/hi` shows what the upstream received.

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    sidekey::telemetry::init(sidekey::telemetry::LogFormat::Pretty);
    if std::env::var_os("EXAMPLE_TOKEN").is_none() {
        std::env::set_var("EXAMPLE_TOKEN", "example-token");
    }
    // The demo's echo server stands in for a real API.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(sidekey::demo::echo_server(echo));

    let config = sidekey::Config::parse(&format!(
        r#"
[listen]
proxy = "127.0.0.1:18080"
admin = "127.0.0.1:19901"

[[routes]]
name = "echo"
prefix = "/echo"
upstream = "http://{echo_addr}"
token = "example"

[tokens.example]
source = "env"
var = "EXAMPLE_TOKEN"
"#
    ))?;
    let mut shutdown = sidekey::ShutdownSignal::listen();
    let running = sidekey::start(config).await?;
    println!("try: curl -s http://{}/echo/hi   (stops in 30 s or on Ctrl-C)", running.proxy_addr);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        _ = shutdown.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}
