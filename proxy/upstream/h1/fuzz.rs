//! The entry point of the fuzz target `upstream_answer`.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request};

use super::{Conn, Encoded};

/// For the fuzz target `upstream_answer`: `data` after its first byte (odd: the request is a
/// HEAD, even: a GET) as an upstream's whole answer on a connection, read through the pool's
/// own code path; the status and body read, or `None` where the answer was refused. Panics
/// where a body came out of another length than its head's one `Content-Length` said.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_answer(data: &[u8]) -> Option<(u16, Vec<u8>)> {
    use crate::body::Body as DataBody;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the fuzz target");
    }
    static POOL: std::sync::OnceLock<Arc<crate::upstream::Pool>> = std::sync::OnceLock::new();
    let (&first, answer) = data.split_first()?;
    let head_request = first & 1 == 1;
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let pool = POOL
                .get_or_init(|| {
                    let client =
                        crate::upstream::build_client(&[], std::time::Duration::from_secs(1)).expect("a client");
                    client.pool(&http::uri::Scheme::HTTP, &http::uri::Authority::from_static("fuzz.invalid"))
                })
                .clone();
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            let answer = answer.to_vec();
            let upstream = tokio::spawn(async move {
                let _ = theirs.write_all(&answer).await;
                let _ = theirs.shutdown().await;
                // Kept open for reading: the request's bytes land here.
                std::future::pending::<()>().await;
            });
            let io = hyper_rustls::MaybeHttpsStream::Http(crate::upstream::Dialed::Memory(
                hyper_util::rt::TokioIo::new(ours),
            ));
            let method = if head_request { Method::HEAD } else { Method::GET };
            let req = Request::builder()
                .method(method)
                .uri("/")
                .header(http::header::HOST, "fuzz.invalid")
                .body(DataBody::Empty)
                .expect("a request");
            let encoded = Encoded::new(req, &pool.host);
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            let conn = Conn::new(hyper_util::rt::TokioIo::new(io));
            let result = match conn.exchange(encoded, pool.clone(), deadline).await {
                Err(_) => None,
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
                    let lengths: Vec<_> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
                    let bodiless =
                        head_request || parts.status.is_informational() || matches!(parts.status.as_u16(), 204 | 304);
                    if let (Some(body), [length], false, false) =
                        (&body, &lengths[..], bodiless, parts.headers.contains_key(TRANSFER_ENCODING))
                    {
                        if let Some(n) = length.to_str().ok().and_then(|l| l.parse::<usize>().ok()) {
                            assert_eq!(body.len(), n, "a body read to another length than its Content-Length");
                        }
                    }
                    body.map(|b| (parts.status.as_u16(), b))
                }
            };
            // Nothing outlives the input: the upstream's end, and a connection put back.
            upstream.abort();
            let _ = upstream.await;
            while pool.checkout_h1().is_some() {}
            result
        })
    })
}
