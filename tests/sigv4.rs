//! AWS SigV4 signing against moto (a real implementation of the AWS APIs, verifying
//! signatures): Secrets Manager and S3 through sidekey, a wrong secret key refused by moto with
//! `SignatureDoesNotMatch`, and an access key rotated through IAM mid-run without a failed request.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::servers::Moto;
use support::*;

/// moto's unauthenticated actions: admin.py setup's three IAM calls.
const SETUP_ACTIONS: u32 = 3;

/// A moto server whose IAM has user `sidekey` with an access key, and that key's
/// credential_process JSON written to `DIR/aws.json`.
async fn moto_with_a_key() -> (Moto, serde_json::Value, tempfile::TempDir, std::path::PathBuf) {
    let moto = Moto::start(SETUP_ACTIONS);
    let creds = moto.admin("setup", &[], None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aws.json");
    write_atomically(&file, &creds.to_string());
    (moto, creds, dir, file)
}

/// A small HTTP/1.1 server on a free loopback port, answering `(status, body)` from `answer`;
/// its base URL.
async fn serve<F>(answer: F) -> String
where
    F: Fn(&Request<hyper::body::Incoming>) -> (u16, String) + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (status, body) = answer(&req);
                    let mut r = http::Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    base
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn config(moto: &Moto, creds_file: &std::path::Path) -> String {
    format!(
        "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\" }} }}\n\
         [[routes]]\nname = \"sm\"\nprefix = \"/sm\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"secretsmanager\", region = \"us-east-1\" }} }}\n\
         [tokens.aws]\nsource = \"file\"\npath = {file:?}\n",
        url = moto.url,
        file = creds_file.display().to_string()
    )
}

fn secrets_manager(proxy: std::net::SocketAddr, action: &str, body: serde_json::Value) -> Request<Full<Bytes>> {
    Request::post(format!("http://{proxy}/sm/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("secretsmanager.{action}"))
        // A signature of the client's own is removed, not forwarded.
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIDCLIENT/20200101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")
        .header("x-amz-date", "20200101T000000Z")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_reach_secrets_manager_and_s3_and_a_wrong_key_is_refused() {
    let (moto, creds, _dir, file) = moto_with_a_key().await;
    let running = start_proxy(&config(&moto, &file)).await;
    let c = client();
    let proxy = running.proxy_addr;

    // Secrets Manager (JSON protocol, body signed with its hash).
    let created =
        send(&c, secrets_manager(proxy, "CreateSecret", serde_json::json!({"Name": "db", "SecretString": "hunter2"})))
            .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let got = send(&c, secrets_manager(proxy, "GetSecretValue", serde_json::json!({"SecretId": "db"}))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["SecretString"], "hunter2");

    // S3: a bucket, an object with a body, the object back.
    let put = |uri: String, body: &'static [u8]| Request::put(uri).body(Full::new(Bytes::from_static(body))).unwrap();
    let a = send(&c, put(format!("http://{proxy}/s3/sidekey-bucket"), b"")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = send(&c, put(format!("http://{proxy}/s3/sidekey-bucket/dir/object.txt"), b"signed body\n")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = get(&c, &format!("http://{proxy}/s3/sidekey-bucket/dir/object.txt")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(&a.body[..], b"signed body\n");
    // A presigned URL's own (bogus) signature is taken out of the query before sidekey signs.
    let presigned =
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDCLIENT%2F20200101%2Fus-east-1%2Fs3%2Faws4_request\
                     &X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00";
    let a = get(&c, &format!("http://{proxy}/s3/sidekey-bucket/dir/object.txt?{presigned}")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(&a.body[..], b"signed body\n");

    // The right key id with a wrong secret: moto checks the signature and refuses it.
    let mut wrong = creds.clone();
    wrong["SecretAccessKey"] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into();
    write_atomically(&file, &wrong.to_string());
    wait_generation(&running, "aws", 2).await;
    let refused = get(&c, &format!("http://{proxy}/s3/sidekey-bucket/dir/object.txt")).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("SignatureDoesNotMatch"), "{}", refused.text());
    let refused = send(&c, secrets_manager(proxy, "GetSecretValue", serde_json::json!({"SecretId": "db"}))).await;
    assert!(refused.status == 400 || refused.status == 403, "{}: {}", refused.status, refused.text());
    assert!(
        refused.text().contains("SignatureDoesNotMatch") || refused.text().contains("IncompleteSignature"),
        "{}",
        refused.text()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_key_rotated_through_iam_mid_run_fails_no_request() {
    let (moto, first, _dir, file) = moto_with_a_key().await;
    let running = start_proxy(&config(&moto, &file)).await;
    let c = client();
    let proxy = running.proxy_addr;
    let put = Request::put(format!("http://{proxy}/s3/rotation")).body(Full::default()).unwrap();
    assert_eq!(send(&c, put).await.status, 200);
    let put = Request::put(format!("http://{proxy}/s3/rotation/o")).body(Full::new(Bytes::from_static(b"x"))).unwrap();
    assert_eq!(send(&c, put).await.status, 200);

    // Requests one after another on keep-alive connections, the whole time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let a = get(&c, &format!("http://{proxy}/s3/rotation/o")).await;
                if a.status == 200 && &a.body[..] == b"x" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {} {}", a.status, a.text());
                }
            }
        })
    };
    let before = ok.load(Ordering::Relaxed);
    // A new key (IAM, signed with the old one), handed to sidekey, then the old key deleted.
    let second = moto.admin("create-key", &[], Some(&first)).await;
    write_atomically(&file, &second.to_string());
    wait_generation(&running, "aws", 2).await;
    let first_id = first["AccessKeyId"].as_str().unwrap();
    moto.admin("delete-key", &[first_id], Some(&second)).await;
    // Load on after the deletion: the old key would now be refused.
    let after_delete = ok.load(Ordering::Relaxed);
    bounded("requests after the old key's deletion", async {
        while ok.load(Ordering::Relaxed) < after_delete + 50 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    bounded("the load task", load).await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("key rotation: {ok} requests, {failed} failed, {} during the rotation", after_delete - before);
    assert_eq!(failed, 0);
    assert!(ok > after_delete, "requests ran after the old key was deleted");
    // The old key is really gone: signing with it now fails.
    write_atomically(&file, &first.to_string());
    wait_generation(&running, "aws", 3).await;
    let refused = get(&c, &format!("http://{proxy}/s3/rotation/o")).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_limit_go_unsigned_to_s3_and_are_refused_elsewhere() {
    let (moto, _creds, _dir, file) = moto_with_a_key().await;
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\", body_limit = 16 }} }}\n\
         [[routes]]\nname = \"sm\"\nprefix = \"/sm\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"secretsmanager\", region = \"us-east-1\", body_limit = 16 }} }}\n\
         [tokens.aws]\nsource = \"file\"\npath = {file:?}\n",
        url = moto.url,
        file = file.display().to_string()
    );
    let running = start_proxy(&config).await;
    let c = client();
    let proxy = running.proxy_addr;
    let put = |uri: String, body: Vec<u8>| Request::put(uri).body(Full::new(Bytes::from(body))).unwrap();
    assert_eq!(send(&c, put(format!("http://{proxy}/s3/big"), Vec::new())).await.status, 200);
    // 64 KiB against a 16-byte limit: S3 takes it as UNSIGNED-PAYLOAD, streamed.
    let body = pattern(64 * 1024);
    let a = send(&c, put(format!("http://{proxy}/s3/big/object"), body.clone())).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let back = get(&c, &format!("http://{proxy}/s3/big/object")).await;
    assert_eq!(back.status, 200);
    assert_eq!(sha256(&back.body), sha256(&body));
    // A body of unknown length (chunked) streams unsigned to S3 too.
    let chunks = futures_util::stream::iter(
        [b"chunked ".as_slice(), b"upload ".as_slice(), b"of unknown length".as_slice()]
            .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(c)))),
    );
    let streamed =
        Request::put(format!("http://{proxy}/s3/big/chunked")).body(http_body_util::StreamBody::new(chunks)).unwrap();
    let raw_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = bounded("the chunked upload", raw_client.request(streamed)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let back = get(&c, &format!("http://{proxy}/s3/big/chunked")).await;
    assert_eq!(&back.body[..], b"chunked upload of unknown length");
    // Secrets Manager takes no unsigned payload: a body past the limit is refused here.
    let big = serde_json::json!({"Name": "too-big", "SecretString": "x".repeat(100)});
    let a = send(&c, secrets_manager(proxy, "CreateSecret", big)).await;
    assert_eq!(a.status, 413, "{}", a.text());
    assert_eq!(a.json()["error"], "body_too_large");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_aws_environment_variables_sign_requests() {
    let moto = Moto::start(SETUP_ACTIONS);
    let creds = moto.admin("setup", &[], None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {:?}\ntoken = \"aws\"\n\
             sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\" }} }}\n\
             [tokens.aws]\nsource = \"env\"\naws = true\n",
            moto.url
        ),
    )
    .unwrap();
    // The real binary, so its environment holds the credentials.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(["run", "--log-format", "json", "-c"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", creds["AccessKeyId"].as_str().unwrap())
        .env("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"].as_str().unwrap())
        .env_remove("AWS_SESSION_TOKEN")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let proxy: std::net::SocketAddr = bounded("sidekey to listen", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("sidekey listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                return v["proxy"].as_str().unwrap().parse().unwrap();
            }
        }
        panic!("sidekey exited before listening");
    })
    .await;
    let c = client();
    let put = Request::put(format!("http://{proxy}/s3/from-env")).body(Full::default()).unwrap();
    let a = send(&c, put).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = get(&c, &format!("http://{proxy}/s3/from-env")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_container_credentials_endpoint_sign_requests() {
    let moto = Moto::start(SETUP_ACTIONS);
    let creds = moto.admin("setup", &[], None).await;
    // The container endpoint: answers the credentials to the holder of its authorization token.
    let mut answer = creds.clone();
    answer["Token"] = "".into();
    answer["Expiration"] = "2099-01-01T00:00:00Z".into();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let base = serve(move |req| {
        let ok = req.headers().get("authorization").is_some_and(|v| v == "pod-identity-token");
        counter.fetch_add(ok as u64, Ordering::Relaxed);
        if ok {
            (200, answer.to_string())
        } else {
            (401, "{}".to_owned())
        }
    })
    .await;
    let endpoint = format!("{base}/v1/credentials");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pod-token"), "pod-identity-token\n").unwrap();
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\" }} }}\n\
         [tokens.aws]\nsource = \"http\"\nurl = {endpoint:?}\npointer = \"\"\n\
         headers = {{ Authorization = {{ file = {pod:?} }} }}\n",
        url = moto.url,
        pod = dir.path().join("pod-token").display().to_string()
    );
    let running = start_proxy(&config).await;
    assert_eq!(served.load(Ordering::Relaxed), 1, "the endpoint was asked once, with its token");
    let status = get(&client(), &format!("http://{}/tokens", running.admin_addr)).await.json();
    assert_eq!(status[0]["expires_at"], "2099-01-01T00:00:00.000Z", "Expiration is the expiry: {status}");
    let c = client();
    let put = Request::put(format!("http://{}/s3/from-endpoint", running.proxy_addr)).body(Full::default()).unwrap();
    let a = send(&c, put).await;
    assert_eq!(a.status, 200, "{}", a.text());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_credential_process_command_sign_requests() {
    let moto = Moto::start(SETUP_ACTIONS);
    let mut creds = moto.admin("setup", &[], None).await;
    creds["Expiration"] = "2098-06-01T12:00:00Z".into();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("credential_process.json");
    std::fs::write(&out, creds.to_string()).unwrap();
    // What `credential_process` commands print; `cat` stands in for one.
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\" }} }}\n\
         [tokens.aws]\nsource = \"exec\"\ncommand = [\"cat\", {out:?}]\n",
        url = moto.url,
        out = out.display().to_string()
    );
    let running = start_proxy(&config).await;
    let status = get(&client(), &format!("http://{}/tokens", running.admin_addr)).await.json();
    assert_eq!(status[0]["expires_at"], "2098-06-01T12:00:00.000Z", "{status}");
    let put = Request::put(format!("http://{}/s3/from-process", running.proxy_addr)).body(Full::default()).unwrap();
    let a = send(&client(), put).await;
    assert_eq!(a.status, 200, "{}", a.text());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_instance_metadata_service_the_imdsv2_way_sign_requests() {
    let (moto, creds, _dir, _) = moto_with_a_key().await;
    // An IMDSv2 stand-in (moto serves the metadata GETs but not IMDSv2's token PUT): the
    // credentials paths answer only with the session token from `PUT /latest/api/token`.
    let mut answer = creds.clone();
    answer["Code"] = "Success".into();
    answer["Token"] = "".into();
    answer["Expiration"] = "2097-03-04T05:06:07Z".into();
    let refused = Arc::new(AtomicU64::new(0));
    let counter = refused.clone();
    let base = serve(move |req| {
        let token_ok = req.headers().get("x-aws-ec2-metadata-token").is_some_and(|v| v == "imds-session");
        let (status, body) = match (req.method().as_str(), req.uri().path()) {
            ("PUT", "/latest/api/token") if req.headers().contains_key("x-aws-ec2-metadata-token-ttl-seconds") => {
                (200, "imds-session".to_owned())
            }
            (_, _) if !token_ok => (401, String::new()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "sidekey-role\n".to_owned()),
            ("GET", "/latest/meta-data/iam/security-credentials/sidekey-role") => (200, answer.to_string()),
            _ => (404, String::new()),
        };
        if status == 401 {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        (status, body)
    })
    .await;
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"s3\"\nprefix = \"/s3\"\nupstream = {url:?}\ntoken = \"aws\"\n\
         sign = {{ aws_sigv4 = {{ service = \"s3\", region = \"us-east-1\" }} }}\n\
         [tokens.aws]\nsource = \"http\"\nurl = \"{base}/latest/meta-data/iam/security-credentials/\"\npointer = \"\"\n\
         aws_imds = true\n",
        url = moto.url
    );
    let running = start_proxy(&config).await;
    let status = get(&client(), &format!("http://{}/tokens", running.admin_addr)).await.json();
    assert_eq!(status[0]["state"], "ready", "{status}");
    assert_eq!(status[0]["expires_at"], "2097-03-04T05:06:07.000Z", "{status}");
    assert_eq!(refused.load(Ordering::Relaxed), 0, "every metadata read carried the session token");
    let put = Request::put(format!("http://{}/s3/from-imds", running.proxy_addr)).body(Full::default()).unwrap();
    let a = send(&client(), put).await;
    assert_eq!(a.status, 200, "{}", a.text());
    running.shutdown().await;
}
