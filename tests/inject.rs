//! Injection forms beyond one header: several headers from several tokens, HTTP Basic from a
//! username and a password token, and a query parameter; each replacing what the client sent,
//! each following its tokens' rotations.

mod support;

use base64::Engine;
use http::Request;
use http_body_util::Full;
use support::*;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(tokens: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in tokens {
            std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
        }
        Files { dir }
    }

    fn token(&self, name: &str) -> String {
        format!("[tokens.{name}]\nsource = \"file\"\npath = {:?}\n", self.dir.path().join(name).display().to_string())
    }

    fn rotate(&self, name: &str, value: &str) {
        let tmp = self.dir.path().join(format!("{name}.new"));
        std::fs::write(&tmp, format!("{value}\n")).unwrap();
        std::fs::rename(tmp, self.dir.path().join(name)).unwrap();
    }
}

#[tokio::test]
async fn headers_from_several_tokens_replace_what_the_client_sent() {
    let up = Upstream::plain().await;
    let f = Files::new(&[("key", "key-1"), ("secret", "secret-1")]);
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"multi\"\nprefix = \"/m\"\nupstream = {:?}\n\
         headers = {{ \"X-Api-Key\" = \"{{token:key}}\", \"X-Api-Secret\" = \"Secret {{token:secret}}\" }}\n{}{}",
        up.url,
        f.token("key"),
        f.token("secret")
    );
    let running = start_proxy(&config).await;
    let c = client();
    let req = Request::get(format!("http://{}/m/a", running.proxy_addr))
        .header("x-api-key", "from-the-client")
        .header("authorization", "Bearer untouched")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-api-key"], "key-1");
    assert_eq!(seen.headers.get_all("x-api-key").iter().count(), 1, "the client's value is replaced");
    assert_eq!(seen.headers["x-api-secret"], "Secret secret-1");
    assert_eq!(seen.headers["authorization"], "Bearer untouched", "headers the route does not name pass");

    f.rotate("secret", "secret-2");
    wait_generation(&running, "secret", 2).await;
    assert_eq!(get(&c, &format!("http://{}/m/b", running.proxy_addr)).await.status, 200);
    assert_eq!(up.last().headers["x-api-key"], "key-1");
    assert_eq!(up.last().headers["x-api-secret"], "Secret secret-2");
    // Both tokens count the request.
    let tokens = get(&c, &format!("http://{}/tokens", running.admin_addr)).await.json();
    for t in tokens.as_array().unwrap() {
        assert_eq!(t["requests"], 2, "{t}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn basic_from_a_username_and_a_password_token_follows_both() {
    let up = Upstream::plain().await;
    let f = Files::new(&[("user", "svc-a"), ("pass", "p@ss:w0rd")]);
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"basic\"\nprefix = \"/b\"\nupstream = {:?}\n\
         basic = {{ username = \"{{token:user}}\", password = \"{{token:pass}}\" }}\n{}{}",
        up.url,
        f.token("user"),
        f.token("pass")
    );
    let running = start_proxy(&config).await;
    let c = client();
    let decoded = |up: &Upstream| {
        let v = up.last().headers["authorization"].to_str().unwrap().to_owned();
        let b64 = v.strip_prefix("Basic ").unwrap_or_else(|| panic!("not Basic: {v}"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    };
    let req = Request::get(format!("http://{}/b/x", running.proxy_addr))
        .header("authorization", "Basic Y2xpZW50OmNsaWVudA==")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    assert_eq!(decoded(&up), "svc-a:p@ss:w0rd", "a colon in the password is fine");
    f.rotate("pass", "second");
    wait_generation(&running, "pass", 2).await;
    get(&c, &format!("http://{}/b/y", running.proxy_addr)).await;
    assert_eq!(decoded(&up), "svc-a:second");
    f.rotate("user", "svc-b");
    wait_generation(&running, "user", 2).await;
    get(&c, &format!("http://{}/b/z", running.proxy_addr)).await;
    assert_eq!(decoded(&up), "svc-b:second");
    running.shutdown().await;
}

#[tokio::test]
async fn the_query_parameter_replaces_the_clients_and_keeps_the_other_parameters() {
    let up = Upstream::plain().await;
    let f = Files::new(&[("k", "q/key+1&x")]);
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"q\"\nprefix = \"/q\"\nupstream = {:?}\ntoken = \"k\"\nquery = \"api_key\"\n{}",
        format!("{}/base", up.url),
        f.token("k")
    );
    let running = start_proxy(&config).await;
    let c = client();
    let a = get(&c, &format!("http://{}/q/items?page=2&api_key=mine&sort=a%20b", running.proxy_addr)).await;
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert_eq!(seen.path, "/base/items?page=2&sort=a%20b&api_key=q%2Fkey%2B1%26x");
    assert!(seen.headers.get("authorization").is_none(), "no header is added");
    get(&c, &format!("http://{}/q/none", running.proxy_addr)).await;
    assert_eq!(up.last().path, "/base/none?api_key=q%2Fkey%2B1%26x");
    f.rotate("k", "second");
    wait_generation(&running, "k", 2).await;
    get(&c, &format!("http://{}/q/after", running.proxy_addr)).await;
    assert_eq!(up.last().path, "/base/after?api_key=second");
    running.shutdown().await;
}

#[tokio::test]
async fn a_missing_token_of_several_answers_503_naming_it_and_forwards_nothing() {
    let up = Upstream::plain().await;
    let f = Files::new(&[("present", "here")]);
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"h\"\nprefix = \"/h\"\nupstream = {:?}\n\
         headers = {{ \"X-A\" = \"{{token:present}}\", \"X-B\" = \"{{token:absent}}\" }}\n\
         [[routes]]\nname = \"b\"\nprefix = \"/b\"\nupstream = {:?}\n\
         basic = {{ username = \"fixed-user\", password = \"{{token:absent}}\" }}\n\
         {}[tokens.absent]\nsource = \"env\"\nvar = \"SIDEKEY_TEST_UNSET_VARIABLE\"\n",
        up.url,
        up.url,
        f.token("present")
    );
    let running = start_proxy(&config).await;
    let c = client();
    for path in ["/h/x", "/b/x"] {
        let a = get(&c, &format!("http://{}{path}", running.proxy_addr)).await;
        assert_eq!(a.status, 503, "{path}: {}", a.text());
        assert_eq!(a.json()["token"], "absent");
    }
    assert!(up.seen().is_empty(), "nothing was forwarded");
    running.shutdown().await;
}
