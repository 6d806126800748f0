//! Hot-path benchmarks: the per-request pieces (route lookup, token header) and a whole
//! proxied request against the same request sent directly, in the same run, so the added
//! latency reads as a difference (and a ratio) against a baseline measured alongside.
//!
//! `whole_stack_in_memory` runs the same over in-memory pipes: the client's connection into
//! sidekey's proxy service, and sidekey's pooled upstream connection to an in-process origin
//! (`sidekey::upstream::listen_in_memory`), so the figure is sidekey's own work per request
//! (routing, the token header, hyper's HTTP/1 both ways, the pool) without the kernel's, against
//! the client talking to the same origin over a pipe directly.
//!
//! `socket_write` compares the two ways to hand a response (head and a small body) to a
//! loopback socket: `writev` of the two buffers, as hyper does, and one `send` of them gathered
//! by `sidekey::http1::socket::poll_write_gathered`, as sidekey's sockets do; each write is read back whole
//! on the other end.
//!
//! `dribbled_body`: one request whose 60 KB head comes whole and whose 64-byte body then
//! comes one byte per read, through the own HTTP/1.1 loop (the head is parsed once).
//!
//! `cargo bench --bench hot_path`
//!
//! The `sidekey` binary zeroes freed heap memory (`sidekey::memory::ZeroOnFree`); this bench
//! installs the same allocator behind a switch, so its cost shows as `*_zero_on_free` entries
//! beside the plain ones (client, proxy and origin share the process and so the allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidekey::memory::ZeroOnFree;
use sidekey::route::RouteTable;

static ZERO_ON_FREE: AtomicBool = AtomicBool::new(false);

/// The system allocator, or the binary's zero-on-free wrapper around it while the switch is on.
struct Switchable;

// SAFETY: both arms are the same underlying allocator (System), so a block may be freed by
// either; the wrapper only adds zeroing before the free.
unsafe impl GlobalAlloc for Switchable {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if ZERO_ON_FREE.load(Ordering::Relaxed) {
            ZeroOnFree.dealloc(p, l)
        } else {
            System.dealloc(p, l)
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ZERO_ON_FREE.load(Ordering::Relaxed) {
            ZeroOnFree.realloc(p, l, n)
        } else {
            System.realloc(p, l, n)
        }
    }
}

#[global_allocator]
static ALLOC: Switchable = Switchable;

fn route_lookup(c: &mut Criterion) {
    let prefixes: Vec<String> = (0..20).map(|i| format!("/service{i}/v1")).collect();
    let table = RouteTable::new(prefixes.iter().map(|p| (None, Some(p.as_str()))));
    let uri: Uri = "/service13/v1/items/42?expand=true".parse().unwrap();
    c.bench_function("route_lookup_20_routes", |b| {
        b.iter(|| {
            table.find(Version::HTTP_11, std::hint::black_box(&uri), || std::hint::black_box(None)).unwrap().route
        })
    });
}

fn allow_list(c: &mut Criterion) {
    use sidekey::config::rules::AllowRule;
    use sidekey::policy::{AllowList, Rule};
    let rules: Vec<Rule> = (0..19)
        .map(|i| AllowRule::parse(&format!("GET /service{i}/v1/**")).unwrap())
        .chain(std::iter::once(AllowRule::parse("POST /repos/*/issues/**").unwrap()))
        .map(Rule::from)
        .collect();
    let list = AllowList::new(rules);
    let method = http::Method::POST;
    // The worst case: every rule is tried, the last one matches.
    c.bench_function("allow_list_20_rules_last_matches", |b| {
        b.iter(|| list.allows(&method, std::hint::black_box("/repos/sidekey/issues/42/comments")))
    });
    c.bench_function("allow_list_20_rules_none_matches", |b| {
        b.iter(|| list.allows(&method, std::hint::black_box("/admin/users/42")))
    });
}

fn config(upstream: &str) -> sidekey::Config {
    config_with(upstream, "")
}

fn config_with(upstream: &str, extra: &str) -> sidekey::Config {
    std::env::set_var("SIDEKEY_BENCH_TOKEN", "bench_token_0123456789abcdef");
    sidekey::Config::parse(&format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
{extra}

[[routes]]
name = "bench"
prefix = "/bench"
upstream = "{upstream}"
token = "t"

[tokens.t]
source = "env"
var = "SIDEKEY_BENCH_TOKEN"
"#
    ))
    .unwrap()
}

fn token_header(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let running = rt.block_on(sidekey::start(config("http://127.0.0.1:9"))).unwrap();
    let token = running.tokens().get("t").unwrap().clone();
    c.bench_function("token_credential_load_and_clone", |b| b.iter(|| token.credential(0).unwrap()));
    rt.block_on(running.shutdown());
}

fn proxied_vs_direct(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = format!(
        "[audit]\npath = {:?}\nsummary_interval = \"1s\"\n",
        audit_dir.path().join("audit.log").display().to_string()
    );
    let (upstream, running, audited) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(sidekey::demo::echo_server(l));
        let running = sidekey::start(config(&format!("http://{addr}"))).await.unwrap();
        let audited = sidekey::start(config_with(&format!("http://{addr}"), &audit)).await.unwrap();
        (addr, running, audited)
    });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let direct: Uri = format!("http://{upstream}/x").parse().unwrap();
    let proxied: Uri = format!("http://{}/bench/x", running.proxy_addr).parse().unwrap();
    let with_audit: Uri = format!("http://{}/bench/x", audited.proxy_addr).parse().unwrap();
    let mut group = c.benchmark_group("request_keepalive_h1");
    group.measurement_time(Duration::from_secs(5));
    let targets = [
        ("direct", &direct, false),
        ("via_sidekey", &proxied, false),
        ("via_sidekey_with_audit", &with_audit, false),
        ("direct_zero_on_free", &direct, true),
        ("via_sidekey_zero_on_free", &proxied, true),
    ];
    for (name, uri, zero_on_free) in targets {
        ZERO_ON_FREE.store(zero_on_free, Ordering::Relaxed);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let req = Request::get(uri.clone()).body(Full::default()).unwrap();
                let client = client.clone();
                async move {
                    let resp = client.request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                }
            })
        });
    }
    ZERO_ON_FREE.store(false, Ordering::Relaxed);
    group.finish();
    rt.block_on(running.shutdown());
    rt.block_on(audited.shutdown());
}

/// The in-process origin: `200 ok` when the request carries the bench token, 401 otherwise.
async fn memory_origin(mut conns: tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>) {
    while let Some(io) = conns.recv().await {
        tokio::spawn(serve_origin(io));
    }
}

async fn serve_origin(io: tokio::io::DuplexStream) {
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let authorized = req.headers().get("authorization").is_some_and(|v| v == "Bearer bench_token_0123456789abcdef");
        let direct = req.headers().contains_key("x-direct");
        let status = if authorized || direct { 200 } else { 401 };
        let resp = hyper::Response::builder().status(status).body(Full::new(Bytes::from_static(b"ok"))).unwrap();
        Ok::<_, std::convert::Infallible>(resp)
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).await;
}

/// A client connection over a pipe whose other end `serve` takes.
async fn pipe_client(
    serve: impl FnOnce(tokio::io::DuplexStream),
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    serve(theirs);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours)).await.unwrap();
    tokio::spawn(conn);
    send
}

fn whole_stack_in_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (running, mut direct, mut proxied) = rt.block_on(async {
        tokio::spawn(memory_origin(sidekey::upstream::listen_in_memory("127.0.0.1:1")));
        let running = sidekey::start(config("http://127.0.0.1:1")).await.unwrap();
        let direct = pipe_client(|io| drop(tokio::spawn(serve_origin(io)))).await;
        // The proxy listener's own serving of a client connection, as `sidekey run` does it.
        let proxy = running.proxy();
        let proxied = pipe_client(move |io| {
            let handler = move |req| futures_util::FutureExt::map(proxy.handle(req), Ok::<_, std::convert::Infallible>);
            drop(tokio::spawn(sidekey::listen::serve_one(io, handler)));
        })
        .await;
        (running, direct, proxied)
    });
    let mut group = c.benchmark_group("whole_stack_in_memory");
    group.measurement_time(Duration::from_secs(5));
    for (name, zero_on_free) in [("direct", false), ("via_sidekey", false), ("via_sidekey_zero_on_free", true)] {
        let is_direct = name == "direct";
        let (send, uri) = if is_direct { (&mut direct, "/x") } else { (&mut proxied, "/bench/x") };
        ZERO_ON_FREE.store(zero_on_free, Ordering::Relaxed);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        let mut req = Request::get(uri).header("host", "127.0.0.1");
                        if is_direct {
                            req = req.header("x-direct", "1");
                        }
                        let resp = send.send_request(req.body(Full::default()).unwrap()).await.unwrap();
                        assert_eq!(resp.status(), 200);
                        resp.into_body().collect().await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    ZERO_ON_FREE.store(false, Ordering::Relaxed);
    group.finish();
    rt.block_on(running.shutdown());
}

fn socket_write(c: &mut Criterion) {
    use std::io::{IoSlice, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut writer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    writer.set_nodelay(true).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: Sun, 29 Nov 2026 01:50:40 GMT\r\n\r\n";
    let bufs = [IoSlice::new(head), IoSlice::new(b"ok")];
    let total = head.len() + 2;
    let mut sink = vec![0u8; 4096];
    let mut read_back = |reader: &mut std::net::TcpStream| {
        let mut got = 0;
        while got < total {
            got += reader.read(&mut sink).unwrap();
        }
    };
    let mut group = c.benchmark_group("socket_write");
    group.bench_function("writev_head_and_body", |b| {
        b.iter(|| {
            assert_eq!(writer.write_vectored(&bufs).unwrap(), total);
            read_back(&mut reader);
        })
    });
    group.bench_function("gathered_send", |b| {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        b.iter(|| {
            let written =
                sidekey::http1::socket::poll_write_gathered(Pin::new(&mut Blocking(&mut writer)), &mut cx, &bufs);
            assert!(matches!(written, std::task::Poll::Ready(Ok(n)) if n == total));
            read_back(&mut reader);
        })
    });
    group.finish();
}

/// A blocking socket as an `AsyncWrite`, each call one system call, for `socket_write`.
struct Blocking<'a>(&'a mut std::net::TcpStream);

impl tokio::io::AsyncWrite for Blocking<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(std::io::Write::write(&mut self.0, buf))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(std::io::Write::write_vectored(&mut self.0, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A 60 KB head whose short body (64 bytes) then comes one byte per read: the own HTTP/1.1
/// loop must not parse the head again for each of them (issue 30, finding 10).
pub fn dribbled_head() -> Vec<u8> {
    let mut head = b"POST /r/x HTTP/1.1\r\nHost: example\r\n".to_vec();
    for i in 0..50 {
        head.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(1200)).as_bytes());
    }
    head.extend_from_slice(b"Content-Length: 64\r\n\r\n");
    head
}

fn dribbled_body(c: &mut Criterion) {
    let head = dribbled_head();
    assert!(head.len() > 60_000);
    assert_eq!(sidekey::serve_dribbled(&head, 64), 1);
    c.bench_function("dribbled_64_byte_body_after_60k_head", |b| b.iter(|| sidekey::serve_dribbled(&head, 64)));
}

criterion_group!(
    benches,
    dribbled_body,
    route_lookup,
    allow_list,
    token_header,
    proxied_vs_direct,
    whole_stack_in_memory,
    socket_write
);
criterion_main!(benches);
