//! Config reload in-process: routes and token definitions swap at once, unchanged tokens keep
//! their values, no connection (client side or upstream side) is dropped.

mod support;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_routes_keeps_unchanged_tokens_and_drops_no_connection() {
    std::env::set_var("SK_RELOAD_T2", "env_two");
    std::env::set_var("SK_RELOAD_T3", "env_three");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t1");
    std::fs::write(&file, "file_one_a\n").unwrap();
    let up = Upstream::plain().await;
    let t1 = format!("[tokens.t1]\nsource = \"file\"\npath = {:?}\n", file.display().to_string());
    let before = format!(
        "{LISTEN}\n[[routes]]\nname = \"r1\"\nprefix = \"/r1\"\nupstream = \"{u}\"\ntoken = \"t1\"\n\n\
         [[routes]]\nname = \"r2\"\nprefix = \"/r2\"\nupstream = \"{u}\"\ntoken = \"t2\"\n\n{t1}\n\
         [tokens.t2]\nsource = \"env\"\nvar = \"SK_RELOAD_T2\"\n",
        u = up.url
    );
    let after = format!(
        "{LISTEN}\n[[routes]]\nname = \"r1\"\nprefix = \"/r1\"\nupstream = \"{u}\"\ntoken = \"t1\"\n\n\
         [[routes]]\nname = \"r1-key\"\nprefix = \"/r1key\"\nupstream = \"{u}\"\ntoken = \"t1\"\nheader = \"X-Key\"\nformat = \"k={{token}}\"\n\n\
         [[routes]]\nname = \"r3\"\nprefix = \"/r3\"\nupstream = \"{u}\"\ntoken = \"t3\"\n\n{t1}\n\
         [tokens.t3]\nsource = \"env\"\nvar = \"SK_RELOAD_T3\"\n",
        u = up.url
    );
    let sk = start_proxy(&before).await;

    // One client connection, kept open across the reload.
    let stream = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(driver);
    async fn on(
        conn: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        path: &str,
    ) -> u16 {
        bounded("the kept connection to be ready", conn.ready()).await.expect("the client connection is open");
        let req = http::Request::get(path).header("host", "sidekey").body(Default::default()).unwrap();
        let resp = bounded("a response on the kept connection", conn.send_request(req)).await.expect("answered");
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
    assert_eq!(on(&mut conn, "/r1/a").await, 200);
    assert_eq!(on(&mut conn, "/r2/a").await, 200);
    std::fs::write(dir.path().join("t1.new"), "file_one_b\n").unwrap();
    std::fs::rename(dir.path().join("t1.new"), &file).unwrap();
    wait_generation(&sk, "t1", 2).await;
    let upstream_connections = up.connection_count();

    let summary = sk.reload(sidekey::Config::parse(&after).unwrap()).await.unwrap();
    assert_eq!(summary.tokens_kept, ["t1"]);
    assert_eq!(summary.tokens_loaded, ["t3"]);
    assert_eq!(summary.tokens_removed, ["t2"]);

    assert_eq!(on(&mut conn, "/r1/b").await, 200);
    assert_eq!(up.find("/b").headers["authorization"], "Bearer file_one_b");
    assert_eq!(on(&mut conn, "/r1key/c").await, 200, "a new route on a kept token");
    assert_eq!(up.find("/c").headers["x-key"], "k=file_one_b");
    assert_eq!(on(&mut conn, "/r3/d").await, 200);
    assert_eq!(up.find("/d").headers["authorization"], "Bearer env_three");
    assert_eq!(on(&mut conn, "/r2/e").await, 404, "a removed route is gone");
    let t1 = sk.tokens().get("t1").unwrap().clone();
    assert_eq!(t1.current().unwrap().generation, 2, "a kept token keeps its value and generation");
    assert_eq!(up.connection_count(), upstream_connections, "the upstream pool survived the reload");

    // A kept token still follows its file after the reload.
    std::fs::write(dir.path().join("t1.new"), "file_one_c\n").unwrap();
    std::fs::rename(dir.path().join("t1.new"), &file).unwrap();
    wait_generation(&sk, "t1", 3).await;
    assert_eq!(on(&mut conn, "/r1key/f").await, 200);
    assert_eq!(up.find("/f").headers["x-key"], "k=file_one_c");
    let tokens = get(&client(), &format!("http://{}/tokens", sk.admin_addr)).await.json();
    let names: Vec<&str> = tokens.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["t1", "t3"]);
    sk.shutdown().await;
}
