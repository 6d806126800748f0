use super::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// An HTTP/1.1 origin that sends each request head it reads (with the connection's
/// number) and answers `200 ok`; with `close`, it closes each connection after one answer.
async fn origin(close: bool) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<(usize, String)>) {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    scripted(std::iter::repeat(if close { "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok<close>" } else { ok })).await
}

/// An origin that answers the n-th request head it reads with the n-th of `answers` (raw
/// bytes), on whichever connection it came, closing that connection after it when the
/// answer ends in `<close>`. Reports each head with its connection's number, and
/// "closed by the client" when a client closes one.
pub(crate) async fn scripted(
    answers: impl Iterator<Item = &'static str> + Send + 'static,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<(usize, String)>) {
    let answers = Mutex::new(answers);
    answering(move || {
        let answer = answers.lock().unwrap().next().expect("an answer for each request");
        Box::pin(std::future::ready(answer.to_owned()))
    })
    .await
}

/// The origin of [`scripted`], each answer the one `next` gives when the head is read (it
/// may wait for the test to release it).
pub(crate) async fn answering<F>(next: F) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<(usize, String)>)
where
    F: Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let next = Arc::new(next);
    tokio::spawn(async move {
        for n in 1.. {
            let (mut s, _) = listener.accept().await.unwrap();
            let (tx, next) = (tx.clone(), next.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let read = s.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        let _ = tx.send((n, "closed by the client".into()));
                        return;
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let _ = tx.send((n, String::from_utf8_lossy(&head).into_owned()));
                        let answer = next().await;
                        let (answer, close) = match answer.strip_suffix("<close>") {
                            Some(a) => (a, true),
                            None => (answer.as_str(), false),
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            let _ = tx.send((n, "closed by the client".into()));
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A deadline no test's answer comes near.
pub(crate) fn soon() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

pub(crate) fn pool_for(addr: std::net::SocketAddr) -> Arc<Pool> {
    let client = build_client(&[], Duration::from_secs(5)).unwrap();
    client.pool(&Scheme::HTTP, &Authority::try_from(addr.to_string().as_str()).unwrap())
}

async fn get(pool: &Arc<Pool>, addr: std::net::SocketAddr, path: &str) -> Bytes {
    let req = Request::get(format!("http://{addr}{path}")).body(Body::Empty).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), pool.request(req, soon())).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn a_request_handed_over_keeps_nothing_of_the_buffer_its_values_were_read_into() {
    let (addr, mut seen) = origin(false).await;
    let pool = pool_for(addr);
    // As hyper parses a request: values that are slices of the connection's read buffer.
    let buffer = Bytes::from(b"text/html, */*curl/8.0".to_vec());
    let request = || {
        let mut req = Request::get("/x").body(Body::Empty).unwrap();
        req.headers_mut().insert("accept", HeaderValue::from_maybe_shared(buffer.slice(0..14)).unwrap());
        req.headers_mut().insert("user-agent", HeaderValue::from_maybe_shared(buffer.slice(14..)).unwrap());
        req
    };
    // No idle connection: the request waits for a new one, with values of its own.
    let answer = pool.request(request(), soon());
    assert!(buffer.is_unique(), "a request waiting for a connection points into the read buffer");
    let read = async { answer.await.unwrap().into_body().collect().await.unwrap().to_bytes() };
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), read).await.unwrap(), "ok");
    let (_, head) = seen.recv().await.unwrap();
    assert!(head.contains("accept: text/html, */*\r\n") && head.contains("user-agent: curl/8.0\r\n"), "{head}");
    // An idle connection: encoded at once, nothing of the request kept, nothing copied.
    assert_eq!(pool.connections(), 1);
    let answer = pool.request(request(), soon());
    assert!(buffer.is_unique(), "a request encoded for an idle connection points into the read buffer");
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), answer).await.unwrap().unwrap().status(), 200);
    let (conn, head) = seen.recv().await.unwrap();
    assert_eq!(conn, 1, "the idle connection was not used");
    assert!(head.contains("accept: text/html, */*\r\n") && head.contains("user-agent: curl/8.0\r\n"), "{head}");
}

#[tokio::test]
async fn requests_one_after_another_share_one_connection_in_origin_form_with_host() {
    let (addr, mut seen) = origin(false).await;
    let pool = pool_for(addr);
    for i in 0..3 {
        assert_eq!(get(&pool, addr, &format!("/a/{i}?q=1")).await, "ok");
        let (conn, head) = seen.recv().await.unwrap();
        assert_eq!(conn, 1, "request {i} opened another connection");
        assert!(head.starts_with(&format!("GET /a/{i}?q=1 HTTP/1.1\r\n")), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("host: {addr}\r\n")), "{head}");
    }
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_dropped_and_another_opened() {
    let (addr, mut seen) = origin(true).await;
    let pool = pool_for(addr);
    for i in 1..=3 {
        assert_eq!(get(&pool, addr, "/").await, "ok");
        assert_eq!(seen.recv().await.unwrap().0, i);
        // The pool sees the close (bounded wait on the condition, no fixed sleep).
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.connections() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the closed connection left the pool");
    }
}

#[tokio::test]
async fn concurrent_requests_get_connections_of_their_own_then_reuse_them() {
    let (addr, mut seen) = origin(false).await;
    let pool = pool_for(addr);
    let (a, b) = tokio::join!(get(&pool, addr, "/1"), get(&pool, addr, "/2"));
    assert_eq!((a, b), (Bytes::from("ok"), Bytes::from("ok")));
    let mut conns = [seen.recv().await.unwrap().0, seen.recv().await.unwrap().0];
    conns.sort();
    assert_eq!(conns, [1, 2]);
    for _ in 0..4 {
        get(&pool, addr, "/again").await;
        assert!(seen.recv().await.unwrap().0 <= 2, "a third connection was opened");
    }
}

#[tokio::test]
async fn a_connection_idle_for_two_sweeps_is_closed_and_a_recently_used_one_kept() {
    let (addr, mut seen) = origin(false).await;
    let pool = pool_for(addr);
    get(&pool, addr, "/").await;
    assert_eq!(seen.recv().await.unwrap().0, 1);
    pool.sweep_once();
    assert_eq!(pool.connections(), 1, "closed after one sweep");
    // Used again: its idle time starts over.
    get(&pool, addr, "/").await;
    assert_eq!(seen.recv().await.unwrap().0, 1);
    pool.sweep_once();
    assert_eq!(pool.connections(), 1, "closed though used since the last sweep");
    pool.sweep_once();
    assert_eq!(pool.connections(), 0);
    let closed = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap().unwrap();
    assert_eq!(closed, (1, "closed by the client".to_owned()));
}

/// A TLS origin offering h2 by ALPN, with a certificate from a throwaway CA: its port, the
/// directory holding the CA's file, and its events ("connection", "closed").
async fn h2_origin() -> (u16, tempfile::TempDir, mpsc::UnboundedReceiver<&'static str>) {
    let ca = crate::pki::Ca::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let (chain, key) = ca.mint("localhost").unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (events, seen) = mpsc::unbounded_channel::<&'static str>();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, events) = (acceptor.clone(), events.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(acceptor.accept(tcp).await.unwrap());
                let _ = events.send("connection");
                let ok = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    assert_eq!(req.version(), http::Version::HTTP_2);
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, ok).await;
                let _ = events.send("closed");
            });
        }
    });
    (port, dir, seen)
}

#[tokio::test]
async fn the_http2_connection_is_shared_and_let_go_when_unused_for_two_sweeps() {
    let (port, dir, mut seen) = h2_origin().await;
    let ca_file = dir.path().join("ca.pem");
    let client = build_client(&[ca_file], Duration::from_secs(5)).unwrap();
    let pool = client.pool(&Scheme::HTTPS, &Authority::try_from(format!("localhost:{port}").as_str()).unwrap());
    let get = || async {
        let req = Request::get(format!("https://localhost:{port}/")).body(Body::Empty).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), pool.request(req, soon())).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    assert_eq!(get().await, "ok");
    assert_eq!(seen.recv().await, Some("connection"));
    let (a, b) = tokio::join!(get(), get());
    assert_eq!((a, b), (Bytes::from("ok"), Bytes::from("ok")));
    assert_eq!(pool.connections(), 1);
    pool.sweep_once();
    get().await;
    pool.sweep_once();
    assert_eq!(pool.connections(), 1, "let go though used since the last sweep");
    pool.sweep_once();
    assert_eq!(pool.connections(), 0);
    let closed = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap();
    assert_eq!(closed, Some("closed"), "a second connection was opened, or the first stayed open");
}

#[tokio::test]
async fn requests_that_find_no_connection_to_an_http2_upstream_share_the_first() {
    let (port, dir, mut seen) = h2_origin().await;
    let client = build_client(&[dir.path().join("ca.pem")], Duration::from_secs(5)).unwrap();
    let pool = client.pool(&Scheme::HTTPS, &Authority::try_from(format!("localhost:{port}").as_str()).unwrap());
    // Sixteen requests at once on a fresh pool: none knows yet that the upstream speaks HTTP/2.
    let gets = (0..16).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let req = Request::get(format!("https://localhost:{port}/")).body(Body::Empty).unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(10), pool.request(req, soon())).await.unwrap().unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        })
    });
    for got in futures_util::future::join_all(gets).await {
        assert_eq!(got.unwrap(), "ok");
    }
    assert_eq!(seen.recv().await, Some("connection"));
    assert!(seen.try_recv().is_err(), "more than one connection was opened");
    assert_eq!(pool.connections(), 1);
}

#[test]
fn host_leaves_out_the_default_port_only() {
    let host = |scheme: Scheme, authority: &str| {
        let c = connector(&[], Duration::from_secs(1)).unwrap();
        Pool::new(c, &scheme, &Authority::try_from(authority).unwrap()).host
    };
    assert_eq!(host(Scheme::HTTP, "example.com:80"), "example.com");
    assert_eq!(host(Scheme::HTTPS, "example.com:443"), "example.com");
    assert_eq!(host(Scheme::HTTPS, "example.com:80"), "example.com:80");
    assert_eq!(host(Scheme::HTTP, "example.com"), "example.com");
    assert_eq!(host(Scheme::HTTP, "[::1]:8080"), "[::1]:8080");
}
