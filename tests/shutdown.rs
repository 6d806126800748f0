//! Graceful shutdown in-process: the grace period bounds the drain.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_drain_that_would_never_end() {
    std::env::set_var("SK_SHUTDOWN_TOKEN", "shutdown_token");
    let up = Upstream::plain().await;
    let config = format!(
        r#"{LISTEN}
[shutdown]
grace = "200ms"

[[routes]]
name = "r"
prefix = "/r"
upstream = "{url}"
token = "t"

[tokens.t]
source = "env"
var = "SK_SHUTDOWN_TOKEN"
"#,
        url = up.url
    );
    let sk = start_proxy(&config).await;
    let url = format!("http://{}/r/hold", sk.proxy_addr);
    let stuck = tokio::spawn(async move {
        let req = http::Request::get(url).body(Default::default()).unwrap();
        client().request(req).await
    });
    up.wait_held().await;
    let proxy_addr = sk.proxy_addr;
    // The upstream never answers; shutdown still completes once the grace period is over.
    bounded("shutdown to finish after its grace period", sk.shutdown()).await;
    let result = bounded("the stuck request to end", stuck).await.unwrap();
    assert!(result.is_err(), "the request cut off by the grace period cannot have succeeded");
    assert!(tokio::net::TcpStream::connect(proxy_addr).await.is_err(), "the listener is closed");
}
