use crate::body::Body as DataBody;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::upstream::tests::{pool_for, soon};
use crate::upstream::Pool;

async fn scripted(answers: Vec<&'static str>) -> (std::net::SocketAddr, Heads) {
    let (addr, seen) = crate::upstream::tests::scripted(answers.into_iter()).await;
    (addr, Heads(seen))
}

/// An origin that answers each request with the next answer the test releases.
async fn held_origin() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<(usize, String)>, mpsc::UnboundedSender<String>)
{
    let (release, answers) = mpsc::unbounded_channel::<String>();
    let answers = Arc::new(tokio::sync::Mutex::new(answers));
    let (addr, seen) = crate::upstream::tests::answering(move || {
        let answers = answers.clone();
        Box::pin(async move { answers.lock().await.recv().await.expect("an answer for each request") })
    })
    .await;
    (addr, seen, release)
}

/// Starts a request, waits until the origin has read it, then drops it (its client went
/// away).
async fn abandon(pool: &Arc<Pool>, seen: &mut mpsc::UnboundedReceiver<(usize, String)>) -> usize {
    let mut request = Box::pin(send(pool, "GET", "/abandoned"));
    let n = tokio::select! {
        _ = &mut request => panic!("answered before the origin answered"),
        event = seen.recv() => event.unwrap(),
    };
    assert!(n.1.starts_with("GET /abandoned "), "{}", n.1);
    n.0
}

#[tokio::test]
async fn an_answer_its_client_abandoned_is_read_and_its_connection_used_again() {
    let (addr, mut seen, release) = held_origin().await;
    let pool = pool_for(addr);
    assert_eq!(abandon(&pool, &mut seen).await, 1);
    release.send("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlater".into()).unwrap();
    // No signal leaves the drain: the pool is looked at until the connection is back.
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.connections() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the abandoned answer's connection is back in the pool");
    release.send("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()).unwrap();
    assert_eq!(send(&pool, "GET", "/b").await, (200, Bytes::from("ok")));
    assert_eq!(seen.recv().await.map(|(n, _)| n), Some(1), "the next request went on the same connection");
}

#[tokio::test]
async fn an_abandoned_answer_too_large_to_read_costs_its_connection() {
    let (addr, mut seen, release) = held_origin().await;
    let pool = pool_for(addr);
    assert_eq!(abandon(&pool, &mut seen).await, 1);
    let big = super::DRAIN_BYTES as usize + 1;
    release.send(format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n{}", "x".repeat(big))).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap();
    assert_eq!(closed, Some((1, "closed by the client".to_owned())));
    assert_eq!(pool.connections(), 0);
    // The next request goes on a new connection.
    release.send("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()).unwrap();
    assert_eq!(send(&pool, "GET", "/b").await, (200, Bytes::from("ok")));
    assert_eq!(seen.recv().await.map(|(n, _)| n), Some(2));
}

/// The request heads the origin read, with their connection's number (closes left out).
struct Heads(mpsc::UnboundedReceiver<(usize, String)>);

impl Heads {
    async fn recv(&mut self) -> Option<(usize, String)> {
        loop {
            let next = self.0.recv().await?;
            if next.1 != "closed by the client" {
                return Some(next);
            }
        }
    }

    fn try_recv(&mut self) -> Result<(usize, String), mpsc::error::TryRecvError> {
        loop {
            let next = self.0.try_recv()?;
            if next.1 != "closed by the client" {
                return Ok(next);
            }
        }
    }
}

async fn send(pool: &Arc<Pool>, method: &str, path: &str) -> (u16, Bytes) {
    let req = Request::builder().method(method).uri(path).body(DataBody::Empty).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), pool.request(req, soon())).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.unwrap();
    (status, body.unwrap().to_bytes())
}

#[tokio::test]
async fn chunked_answers_with_extensions_and_trailers_then_the_connection_again() {
    let (addr, mut seen) = scripted(vec![
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool_for(addr);
    assert_eq!(send(&pool, "GET", "/a").await, (200, Bytes::from("hello world")));
    assert_eq!(send(&pool, "GET", "/b").await, (200, Bytes::from("ok")));
    assert_eq!(seen.recv().await.unwrap().0, 1);
    assert_eq!(seen.recv().await.unwrap().0, 1, "the second request went on another connection");
}

#[tokio::test]
async fn interim_answers_are_skipped_and_head_answers_have_no_body() {
    let (addr, mut seen) = scripted(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nnew",
            "HTTP/1.1 200 OK\r\ncontent-length: 12345\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n!",
        ])
        .await;
    let pool = pool_for(addr);
    assert_eq!(send(&pool, "POST", "/").await, (201, Bytes::from("new")));
    assert_eq!(send(&pool, "HEAD", "/").await, (200, Bytes::new()));
    assert_eq!(send(&pool, "DELETE", "/").await, (204, Bytes::new()));
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("!")));
    for _ in 0..4 {
        assert_eq!(seen.recv().await.unwrap().0, 1, "a connection was not used again");
    }
}

#[tokio::test]
async fn a_connection_the_answer_leaves_in_doubt_is_not_used_again() {
    let (addr, mut seen) = scripted(vec![
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        // Read to the end of the stream.
        "HTTP/1.1 200 OK\r\n\r\nuntil closed<close>",
        "HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n1.0",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nte\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast",
    ])
    .await;
    let pool = pool_for(addr);
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("ok")));
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("until closed")));
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("1.0")));
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("te")));
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("last")));
    let conns: Vec<usize> = [(); 5].iter().map(|_| seen.try_recv().unwrap().0).collect();
    assert_eq!(conns, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn bad_answers_are_errors_and_their_connection_is_closed() {
    let (addr, mut seen) = scripted(vec![
        "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort<close>",
        "nonsense\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool_for(addr);
    let req = || Request::get("/").body(DataBody::Empty).unwrap();
    assert!(pool.request(req(), soon()).await.is_err(), "an invalid content-length was taken");
    let resp = pool.request(req(), soon()).await.unwrap();
    assert!(resp.into_body().collect().await.is_err(), "a bad chunk size was taken");
    let resp = pool.request(req(), soon()).await.unwrap();
    assert!(resp.into_body().collect().await.is_err(), "a body cut short was taken whole");
    assert!(pool.request(req(), soon()).await.is_err(), "a malformed head was taken");
    assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("ok")));
    let conns: Vec<usize> = [(); 5].iter().map(|_| seen.try_recv().unwrap().0).collect();
    assert_eq!(conns, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_request_a_pooled_connection_drops_unanswered_is_sent_again_only_when_that_is_safe() {
    // The pooled connection looks open, takes the request, and closes without a byte of an
    // answer (the upstream timed it out as it came): a GET goes again on a new connection,
    // a POST does not (it may have been acted on).
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, mut seen) = scripted(vec![ok, "<close>", ok, "<close>"]).await;
    let pool = pool_for(addr);
    assert_eq!(send(&pool, "GET", "/1").await, (200, Bytes::from("ok")));
    assert_eq!(send(&pool, "GET", "/2").await, (200, Bytes::from("ok")));
    let post = Request::post("/3").body(DataBody::Full(Bytes::from("x"))).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), pool.request(post, soon())).await.unwrap();
    assert!(matches!(answer, Err(crate::upstream::UpstreamError::Exchange(_))), "{answer:?}");
    let heads: Vec<(usize, String)> = (0..4).map(|_| seen.try_recv().unwrap()).collect();
    let lines: Vec<(usize, &str)> = heads.iter().map(|(n, h)| (*n, h.lines().next().unwrap())).collect();
    assert_eq!(
        lines,
        [(1, "GET /1 HTTP/1.1"), (1, "GET /2 HTTP/1.1"), (2, "GET /2 HTTP/1.1"), (2, "POST /3 HTTP/1.1")]
    );
    assert!(seen.try_recv().is_err(), "the POST was sent again");
}

#[tokio::test]
async fn requests_right_after_the_upstream_closed_its_connection_are_sent_again() {
    // Every answer closes its connection without saying so: the next request finds the
    // pooled connection closed (seen as closed, or failing on it) and goes on a new one.
    let answers = vec!["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok<close>"; 20];
    let (addr, mut seen) = scripted(answers).await;
    let pool = pool_for(addr);
    for _ in 0..20 {
        assert_eq!(send(&pool, "GET", "/").await, (200, Bytes::from("ok")));
    }
    let conns: Vec<usize> = (0..20).map(|_| seen.try_recv().unwrap().0).collect();
    assert_eq!(conns, (1..=20).collect::<Vec<_>>(), "a request was answered twice or not at all");
}
