use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn a_connections_task_holds_its_future_once() {
    let task = async {
        let state = [1u8; 4096];
        tokio::task::yield_now().await;
        std::hint::black_box(&state);
    };
    let alone = std::mem::size_of_val(&task);
    let held = holding(task, (Arc::new(()), 7u64));
    let size = std::mem::size_of_val(&held);
    assert!(size < alone + 64, "the task is {size} bytes around a future of {alone}");
}

fn watched(io: tokio::io::DuplexStream) -> Watched<tokio::io::DuplexStream> {
    Watched { io, watch: ConnWatch::new(), pre: Vec::new() }
}

#[test]
fn a_connection_in_use_is_looked_at_again_within_an_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        header_read_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let watch = ConnWatch::new();
    let within = |v: Verdict| match v {
        Verdict::Wait(at) => at <= now_ms() + 200,
        _ => false,
    };
    // A head begun: its timeout is 10 s away, but the request may end sooner.
    watch.on_read();
    assert!(within(watch.check(&limits)), "a head in progress put the next look past the idle timeout");
    // Served: the same.
    let in_flight = watch.begin(false);
    assert!(within(watch.check(&limits)), "a request in flight put the next look past the idle timeout");
    drop(in_flight);
    // With the defaults (idle 90 s, header 10 s) a head's own timeout comes first.
    let defaults = Limits::default();
    watch.on_read();
    match watch.check(&defaults) {
        Verdict::Wait(at) => assert!(at > now_ms() + 9_000 && at <= now_ms() + 10_000),
        _ => panic!("a fresh head is not due yet"),
    }
}

#[tokio::test]
async fn a_guard_that_woke_the_connection_for_nothing_still_wakes_it_when_it_fires() {
    // The connection's task, seen through a waker that notes its wake-ups.
    struct Task(AtomicBool);
    impl std::task::Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let task = Arc::new(Task(AtomicBool::new(false)));
    let waker = std::task::Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    let (watch, limits) = (ConnWatch::new(), Limits::default());
    let guards = Guards { watch: &watch, limits: &limits, what: "test", peer: ([127, 0, 0, 1], 1).into() };
    let (stop_tx, mut stop) = watch::channel(false);
    let conn = std::pin::pin!(std::future::pending::<()>());
    let mut drive = std::pin::pin!(guards.drive(conn, None, &mut stop));
    assert!(drive.as_mut().poll(&mut cx).is_pending(), "a connection that never ends ended");
    // The shutdown signal changes without saying stop: the guard wakes the task (taking
    // the waker it was handed), and there is nothing to do.
    stop_tx.send(false).unwrap();
    assert!(task.0.swap(false, Ordering::SeqCst), "a change of the shutdown signal did not wake the task");
    assert!(drive.as_mut().poll(&mut cx).is_pending(), "cut off by a signal that did not say stop");
    // Then it says stop: that wake-up must reach the task all the same.
    stop_tx.send(true).unwrap();
    assert!(task.0.load(Ordering::SeqCst), "the stop signal did not wake the task");
    assert_eq!(drive.as_mut().poll(&mut cx), Poll::Ready(None), "the stop signal did not cut the connection off");
}

#[tokio::test]
async fn an_http1_head_is_handed_over_whole_by_the_first_read() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let head = b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: test/1.0\r\nAccept: */*\r\n\r\n";
    client.write_all(head).await.unwrap();
    let mut io = watched(server);
    assert_eq!(io.sniff().await.unwrap(), Speaks::Http1);
    assert_ne!(io.watch.head_started.load(Ordering::Relaxed), 0, "the bytes count as a request head begun");
    let mut buf = vec![0u8; 8192];
    let n = io.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], head, "hyper's first read gets the head, not the preface's 24 bytes");
    client.write_all(b"more").await.unwrap();
    let n = io.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"more", "then reads go to the socket");
}

#[tokio::test]
async fn the_h2_preface_is_recognised_across_packets_and_kept() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut io = watched(server);
    let sniffing = tokio::spawn(async move {
        let speaks = io.sniff().await.unwrap();
        (speaks, io)
    });
    client.write_all(&H2_PREFACE[..7]).await.unwrap();
    tokio::task::yield_now().await;
    client.write_all(&H2_PREFACE[7..]).await.unwrap();
    client.write_all(b"\x00\x00\x00\x04").await.unwrap();
    let (speaks, mut io) = tokio::time::timeout(Duration::from_secs(10), sniffing).await.unwrap().unwrap();
    assert_eq!(speaks, Speaks::Http2);
    // A small read buffer takes the kept bytes in parts.
    let mut got = Vec::new();
    while got.len() < H2_PREFACE.len() {
        let mut small = [0u8; 10];
        let n = io.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
    }
    assert_eq!(&got[..H2_PREFACE.len()], H2_PREFACE);
}

#[tokio::test]
async fn a_partial_preface_then_other_bytes_is_http1_and_a_silent_close_is_nothing() {
    let (mut client, server) = tokio::io::duplex(1024);
    client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
    let mut io = watched(server);
    assert_eq!(io.sniff().await.unwrap(), Speaks::Http1);

    let (client, server) = tokio::io::duplex(1024);
    drop(client);
    assert_eq!(watched(server).sniff().await.unwrap(), Speaks::Nothing);
}
