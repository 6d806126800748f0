//! `CONNECT host:port`: intercepted when a route names the host (its inner requests come back
//! to the handler with the tunnel's target), tunnelled untouched to a passthrough host, refused
//! otherwise.

use std::sync::Arc;

use http::{Request, Response};

use super::{DataBody, Proxy};
use crate::config::HostPort;
use crate::error::ProxyError;
use crate::listen::Tunnel;
use crate::upstream::ProxyBody;

/// What a CONNECT became, for `sidekey_connect_total{result}`.
fn count_connect(result: &'static str) {
    metrics::counter!("sidekey_connect_total", "result" => result).increment(1);
}

impl Proxy {
    /// `CONNECT host:port`: intercepted when a route names the host, tunnelled untouched when it
    /// is a passthrough host, refused otherwise (sidekey is never an open proxy).
    pub(super) async fn connect(&self, mut req: Request<ProxyBody>) -> Response<ProxyBody> {
        let result = self.open_tunnel(&mut req).await;
        let (outcome, response) = match result {
            Ok((outcome, response)) => (outcome, response),
            Err(e) => {
                let outcome = match e {
                    ProxyError::ConnectRefused | ProxyError::ConnectTarget => "refused",
                    _ => "failed",
                };
                (outcome, e.into_response())
            }
        };
        count_connect(outcome);
        let target = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
        tracing::debug!(target, outcome, status = response.status().as_u16(), "CONNECT");
        response
    }

    async fn open_tunnel(
        &self,
        req: &mut Request<ProxyBody>,
    ) -> Result<(&'static str, Response<ProxyBody>), ProxyError> {
        let authority = req.uri().authority().cloned().ok_or(ProxyError::ConnectTarget)?;
        let target = HostPort::parse(authority.as_str(), 443).map_err(|_| ProxyError::ConnectTarget)?;
        let Some(intercept) = &self.intercept else { return Err(ProxyError::ConnectRefused) };
        // Absent for HTTP/2 CONNECT: clients use HTTP/1.1 to talk to an HTTP proxy.
        let Some(tunnel) = req.extensions_mut().remove::<Tunnel>() else { return Err(ProxyError::ConnectRefused) };
        let ok = || Response::new(DataBody::Empty);
        if self.routes.load().table.host_route(authority.as_str()).is_some() {
            let tls = intercept.server_config(&target.host).map_err(|e| {
                tracing::error!(host = %target.host, error = %e, "cannot mint a certificate for an intercepted host");
                ProxyError::InterceptFailed
            })?;
            let on_upgrade = hyper::upgrade::on(&mut *req);
            let (proxy, via): (Proxy, Arc<str>) = (self.clone(), authority.as_str().into());
            let inner = tunnel.clone();
            tunnel.run(async move {
                let upgraded = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => return tracing::debug!(error = %e, "CONNECT upgrade failed"),
                };
                let accept = tokio_rustls::TlsAcceptor::from(tls).accept(hyper_util::rt::TokioIo::new(upgraded));
                let stream = match tokio::time::timeout(inner.handshake_timeout(), accept).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return tracing::warn!(target = %via, peer = %inner.peer, error = %e,
                            "client TLS handshake failed in an intercepted tunnel (does the client trust sidekey's CA?)")
                    }
                    Err(_) => return tracing::debug!(target = %via, peer = %inner.peer, "client TLS handshake timed out"),
                };
                inner
                    .serve(stream, move |req| {
                        futures_util::FutureExt::map(proxy.handle_via(req, Some(&via)), Ok::<_, std::convert::Infallible>)
                    })
                    .await;
            });
            return Ok(("intercepted", ok()));
        }
        if intercept.is_passthrough(&target) {
            let connect = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
            let mut upstream = match tokio::time::timeout(self.connect_timeout, connect).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(target = %authority, error = %e, "cannot reach a passthrough host");
                    return Err(ProxyError::UpstreamUnreachable);
                }
                Err(_) => return Err(ProxyError::UpstreamTimeout),
            };
            let _ = upstream.set_nodelay(true);
            let on_upgrade = hyper::upgrade::on(&mut *req);
            tunnel.run(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            return Ok(("passthrough", ok()));
        }
        Err(ProxyError::ConnectRefused)
    }
}
