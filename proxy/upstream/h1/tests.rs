use super::*;
use http::HeaderMap;

fn head(text: &str) -> Head {
    let (head, len) = parse_head(text.as_bytes()).unwrap().unwrap();
    assert_eq!(len, text.len());
    head
}

#[test]
fn an_answers_fields_are_kept_as_they_came_less_the_hops_own() {
    let (head, _) = parse_head(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Content-Length: 5\r\nX-Two: a\r\nx-two: b\r\nProxy-Authenticate: Basic\r\nDate: today\r\n\r\nhello",
    )
    .unwrap()
    .unwrap();
    assert!(head.headers.is_empty());
    let fields = head.fields.expect("kept as they came");
    assert_eq!(
        String::from_utf8_lossy(fields.block()),
        "Server: up\r\nContent-Length: 5\r\nX-Two: a\r\nx-two: b\r\nDate: today\r\n"
    );
    assert_eq!((fields.length(), fields.has_date()), (Some(5), true));
    let mut map = HeaderMap::new();
    fields.append_to(&mut map);
    assert_eq!(map.len(), 5);
    assert_eq!(map.get_all("x-two").iter().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(map["content-length"], "5");

    // Where more is to be done to them than leaving out the hop's, a header map.
    for text in [
        "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (head, _) = parse_head(text.as_bytes()).unwrap().unwrap();
        assert!(head.fields.is_none() && !head.headers.is_empty(), "{text}");
    }
    // A chunked answer's fields are kept, without its coding.
    let (head, _) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: x\r\n\r\n").unwrap().unwrap();
    let fields = head.fields.unwrap();
    assert_eq!((fields.block(), fields.length()), (&b"ETag: x\r\n"[..], None));
}

#[test]
fn a_requests_fields_go_upstream_as_they_came_with_the_credential_set_beside_them() {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut slots);
    let text = b"GET /x HTTP/1.1\r\nAuthorization: mine\r\nHost: Client.Example\r\nX-A: 1\r\n\
                     Connection: keep-alive\r\nKeep-Alive: 5\r\nauthorization: again\r\nX-B:2\r\nX-C:  3 \r\n\
                     X-D: 4\nContent-Length: 0\r\n\r\n";
    req.parse(text).unwrap();
    let mut fields = Fields::request(text, req.headers, Some(0)).unwrap();
    assert_eq!(fields.host(), Some(&b"Client.Example"[..]));
    // Names as they came; lines not in the usual form written so (no bare LF goes on).
    assert_eq!(
        String::from_utf8_lossy(fields.block()),
        "Authorization: mine\r\nX-A: 1\r\nauthorization: again\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nContent-Length: 0\r\n"
    );
    fields.remove(&http::header::AUTHORIZATION);
    // Every field of that name gone, in any case.
    assert_eq!(fields.block(), b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nContent-Length: 0\r\n");
    // A name of a length none of them has is not looked for (nor one of a length some has).
    fields.remove(&HeaderName::from_static("x-absent-name"));
    fields.remove(&HeaderName::from_static("x-e"));
    assert_eq!(fields.block().len(), 51);

    // The fields of `method` `path`, encoded with a credential as the pool writes them.
    let with_secret = |method: Method, path: &str, fields: Fields, host: &'static str| {
        let mut req = Request::new(DataBody::Fields(fields));
        (*req.method_mut(), *req.uri_mut()) = (method, path.parse().unwrap());
        let secret = HeaderValue::from_static("Bearer s3cret");
        let host = HeaderValue::from_static(host);
        if let DataBody::Fields(fields) = req.body_mut() {
            fields.set_credential(&http::header::AUTHORIZATION, secret);
        }
        Encoded::new(req, &host)
    };
    assert_eq!(
        String::from_utf8(with_secret(Method::GET, "/up/x?q", fields, "pool:1").bytes).unwrap(),
        "GET /up/x?q HTTP/1.1\r\nhost: pool:1\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nContent-Length: 0\r\n\
             authorization: Bearer s3cret\r\n\r\n"
    );

    // For a header map (HTTP/2, a retry): with their `Host` or without.
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(text).unwrap();
    let fields = Fields::request(text, req.headers, Some(0)).unwrap();
    let (mut all, mut block) = (HeaderMap::new(), HeaderMap::new());
    fields.append_to(&mut all);
    fields.append_block_to(&mut block);
    assert_eq!(all["host"], "Client.Example");
    assert_eq!(all.get_all("authorization").iter().count(), 2);
    assert_eq!((all.len(), block.len()), (8, 7));
    assert!(!block.contains_key("host"));
    // Two Hosts: not served from fields (hyper's server gets the request).
    let mut slots = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut slots);
    let text = b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n";
    req.parse(text).unwrap();
    assert!(Fields::request(text, req.headers, None).is_none());

    // A short body after the lines: apart from them when a field is removed, written after
    // the credential, and taken out whole for a header map.
    let mut slots = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut slots);
    let text = b"POST /p HTTP/1.1\r\nHost: h\r\nAuthorization: mine\r\nContent-Length: 5\r\n\r\nhello";
    req.parse(text).unwrap();
    let mut fields = Fields::request(text, req.headers, Some(5)).unwrap();
    fields.set_body(b"hello");
    fields.remove(&http::header::AUTHORIZATION);
    assert_eq!((fields.block(), fields.body()), (&b"Content-Length: 5\r\n"[..], &b"hello"[..]));
    let mut headers = HeaderMap::new();
    fields.append_to(&mut headers);
    assert_eq!(headers.len(), 2, "the body is not read as a field: {headers:?}");
    let encoded = with_secret(Method::POST, "/p", fields.clone(), "pool");
    assert_eq!(
        String::from_utf8(encoded.bytes.clone()).unwrap(),
        "POST /p HTTP/1.1\r\nhost: pool\r\nContent-Length: 5\r\nauthorization: Bearer s3cret\r\n\r\nhello"
    );
    assert!(encoded.body.is_none(), "the body is written with the head, from memory");
    assert_eq!(fields.take_body(), Bytes::from_static(b"hello"));
    assert_eq!((fields.block(), fields.body()), (&b"Content-Length: 5\r\n"[..], &b""[..]));
}

#[test]
fn where_a_body_ends() {
    let f = |text: &str, head_request| framing(&head(text), head_request).map_err(|e| e.to_string());
    assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false), Ok((Framing::Length(12), true)));
    assert_eq!(f("HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n", false), Ok((Framing::Length(12), true)));
    assert!(f("HTTP/1.1 200 OK\r\ncontent-length: 12\r\ncontent-length: 13\r\n\r\n", false).is_err());
    assert!(f("HTTP/1.1 200 OK\r\ncontent-length: +12\r\n\r\n", false).is_err());
    assert!(f("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n", false).is_err());
    assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false), Ok((Framing::Chunked, true)));
    assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n", false), Ok((Framing::Chunked, true)));
    assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", false), Ok((Framing::Close, false)));
    // Both: read as chunked, the connection not used again.
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", false),
        Ok((Framing::Chunked, false))
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Ok((Framing::Close, false)));
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n", false),
        Ok((Framing::Length(5), false))
    );
    assert_eq!(f("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", false), Ok((Framing::Length(5), false)));
    assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true), Ok((Framing::Length(0), true)));
    assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", false), Ok((Framing::Length(0), true)));
    assert_eq!(f("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", false), Ok((Framing::Length(0), true)));
    assert_eq!(f("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", false), Ok((Framing::Length(0), false)));
    // Fields read in one pass: a list spread over several fields counts as one, in order.
    let chunked_last = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(f(chunked_last, false), Ok((Framing::Chunked, true)));
    let gzip_last = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n";
    assert_eq!(f(gzip_last, false), Ok((Framing::Close, false)));
    let empty_last = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \r\n\r\n";
    assert_eq!(f(empty_last, false), Ok((Framing::Chunked, true)));
    let close_later = "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\nConnection: x, Close\r\n\r\n";
    assert_eq!(f(close_later, false), Ok((Framing::Length(1), false)));
    // A bad length beside a transfer coding is not the one that counts.
    let bad_length_first = "HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(f(bad_length_first, false), Ok((Framing::Chunked, false)));
    assert!(f("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: x\r\n\r\n", false).is_err());
}

#[test]
fn the_fuzz_entry_reads_answers_as_the_pool_does() {
    assert_eq!(fuzz_answer(b"\0HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), Some((200, b"ok".to_vec())));
    assert_eq!(fuzz_answer(b"\x01HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"), Some((200, Vec::new())));
    assert_eq!(fuzz_answer(b"\0HTTP/1.1 200 OK\r\n\r\nto the end"), Some((200, b"to the end".to_vec())));
    assert_eq!(fuzz_answer(b"\0HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"), None);
    assert_eq!(fuzz_answer(b"\0garbage"), None);
    assert_eq!(fuzz_answer(b""), None);
}

#[test]
fn heads_parse_whole_or_not_at_all() {
    assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-len").unwrap().is_none());
    assert!(parse_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    assert!(parse_head(b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n").is_err());
    let h = head("HTTP/1.1 404 Not Found\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
    assert_eq!(h.status, 404);
    let mut headers = h.headers.clone();
    h.fields.expect("kept as they came").append_to(&mut headers);
    assert_eq!(headers.get_all("x-a").iter().count(), 2);
}

#[test]
fn requests_are_framed_by_their_body() {
    let enc = |method: Method, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri("/p?q=1")
            .header("host", "h")
            .header("content-length", "999")
            .body(DataBody::Full(Bytes::from_static(body.as_bytes())))
            .unwrap();
        String::from_utf8(Encoded::new(req, &HeaderValue::from_static("pool")).bytes).unwrap()
    };
    assert_eq!(enc(Method::POST, "abc"), "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc");
    assert_eq!(enc(Method::POST, ""), "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n");
    let get = Request::get("/").header("host", "h").body(DataBody::Full(Bytes::new())).unwrap();
    let pool = HeaderValue::from_static("pool:8080");
    assert_eq!(String::from_utf8(Encoded::new(get, &pool).bytes).unwrap(), "GET / HTTP/1.1\r\nhost: h\r\n\r\n");
    // Without a `Host` of its own, the pool's goes first.
    let get = Request::get("/a").header("x-b", "c").body(DataBody::Full(Bytes::new())).unwrap();
    assert_eq!(
        String::from_utf8(Encoded::new(get, &pool).bytes).unwrap(),
        "GET /a HTTP/1.1\r\nhost: pool:8080\r\nx-b: c\r\n\r\n"
    );
    assert_eq!(itoa(0, &mut [0; 20]), b"0");
    for n in [0, 1, 15, 16, 255, 4096, 0x1234abcd] {
        let mut hex = Vec::new();
        push_hex(&mut hex, n);
        assert_eq!(hex, format!("{n:x}").as_bytes());
    }
    assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
}

#[tokio::test(start_paused = true)]
async fn a_connection_timer_goes_off_at_each_requests_own_deadline() {
    use std::time::Duration;
    use tokio::time::{advance, Instant};
    let (ours, _theirs) = tokio::io::duplex(64);
    let io = hyper_rustls::MaybeHttpsStream::Http(crate::upstream::Dialed::Memory(hyper_util::rt::TokioIo::new(ours)));
    let mut conn = Conn::new(hyper_util::rt::TokioIo::new(io));
    let waker = std::task::Waker::noop();
    let mut poll = |deadline| conn.poll_deadline(&mut Context::from_waker(waker), deadline).is_ready();
    let ms = Duration::from_millis;
    // A first request arms the timer at its deadline; a later one with a later deadline
    // leaves it there.
    let first = Instant::now() + ms(100);
    assert!(!poll(first));
    let second = Instant::now() + ms(1000);
    assert!(!poll(second));
    // Gone off at the first deadline: the second request is not due, the timer is set again.
    advance(ms(150)).await;
    assert!(!poll(second), "a request was cut off at an earlier request's deadline");
    advance(ms(800)).await;
    assert!(!poll(second));
    advance(ms(50)).await;
    assert!(poll(second), "the request's own deadline passed unseen");
    // A timer that went off while the connection sat idle: set again for the next request.
    let third = Instant::now() + ms(50);
    assert!(!poll(third));
    advance(ms(50)).await;
    assert!(poll(third));
    // A request with an earlier deadline than the one armed (a route with a shorter timeout).
    assert!(!poll(Instant::now() + ms(10_000)));
    let short = Instant::now() + ms(100);
    assert!(!poll(short));
    advance(ms(100)).await;
    assert!(poll(short), "a shorter deadline waited for the longer one armed before it");
}
