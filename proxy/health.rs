//! `sidekey health`: asks a running sidekey's `/readyz`, for a container `HEALTHCHECK` in an
//! image that has no shell and no curl.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole probe's budget: connecting, asking, reading the answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The admin address to ask: `admin` if given, else the config's `listen.admin` (the default
/// config's without one), an unspecified address (`0.0.0.0`, `::`) taken as loopback.
pub fn target(admin: Option<&str>, config: Option<&Path>) -> Result<SocketAddr, String> {
    let addr = match (admin, config) {
        (Some(a), _) => a.parse::<SocketAddr>().map_err(|_| format!("--admin {a:?}: expected IP:PORT"))?,
        (None, Some(path)) => {
            crate::config::Config::load(path).map_err(|e| e.to_string().trim_end().to_owned())?.listen.admin
        }
        (None, None) => crate::config::Listen::default().admin,
    };
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    })
}

/// `Ok` when `GET /readyz` at `addr` answers 200 within [`TIMEOUT`]; else why not.
pub async fn probe(addr: &SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, ask(addr)).await {
        Err(_) => Err(format!("{addr}: no answer within {}s", TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Ok(Ok((200, _))) => Ok(()),
        Ok(Ok((status, body))) => Err(format!("{addr}: not ready ({status}) {}", body.trim())),
    }
}

async fn ask(addr: &SocketAddr) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // /readyz answers a few hundred bytes; more is not a sidekey.
    stream.take(64 * 1024).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_flag_or_the_config_and_unspecified_means_loopback() {
        assert_eq!(target(Some("127.0.0.1:7"), None), Ok("127.0.0.1:7".parse().unwrap()));
        assert_eq!(target(Some("0.0.0.0:7"), None), Ok("127.0.0.1:7".parse().unwrap()));
        assert_eq!(target(Some("[::]:7"), None), Ok("[::1]:7".parse().unwrap()));
        assert!(target(Some("localhost"), None).unwrap_err().contains("IP:PORT"));
        assert_eq!(target(None, None), Ok("127.0.0.1:9901".parse().unwrap()));
    }
}
