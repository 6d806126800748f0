use super::*;

const GOOD: &str = r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:1"

[[routes]]
name = "github"
prefix = "/github"
upstream = "https://api.github.com"
token = "gh"

[tokens.gh]
source = "env"
var = "GH_TOKEN"
"#;

#[test]
fn parses_a_good_config_with_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.routes[0].header(), "Authorization");
    assert_eq!(c.routes[0].format(), "Bearer {token}");
    assert_eq!(c.upstream.timeout, Duration::from_secs(30));
    assert!(matches!(c.tokens["gh"].source, SourceConfig::Env(_)));
}

fn errors(text: &str) -> Vec<ConfigError> {
    Config::parse(text).unwrap_err().errors
}

#[test]
fn a_route_injects_one_way_with_the_tokens_it_names() {
    let tokens = "[tokens.a]\nsource = \"env\"\nvar = \"A\"\n[tokens.b]\nsource = \"env\"\nvar = \"B\"\n";
    let route = |body: &str| {
        format!("[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://a.example\"\n{body}\n{tokens}")
    };
    let problems = |body: &str| -> Vec<(String, String)> {
        errors(&route(body)).into_iter().map(|e| (e.key, e.message)).collect()
    };
    let key_of = |body: &str| problems(body).first().map(|p| p.0.clone()).unwrap_or_default();
    for ok in [
        "token = \"a\"",
        "token = \"a\"\nheader = \"X-Key\"\nformat = \"{token}\"",
        "token = \"a\"\nquery = \"api_key\"",
        "headers = { \"X-A\" = \"{token:a}\", \"X-B\" = \"Key {token:b}\" }",
        "basic = { username = \"{token:a}\", password = \"{token:b}\" }",
        "basic = { username = \"fixed\", password = \"{token:b}\" }",
    ] {
        Config::parse(&route(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert_eq!(key_of("token = \"a\"\nquery = \"k\"\nheader = \"X\""), "routes[0].query");
    assert_eq!(
        key_of("headers = { \"X\" = \"{token:a}\" }\nbasic = { username = \"u\", password = \"{token:a}\" }"),
        "routes[0].basic"
    );
    assert_eq!(key_of("token = \"a\"\nheaders = { \"X\" = \"{token:a}\" }"), "routes[0].token");
    assert_eq!(key_of("query = \"k\""), "routes[0]");
    assert_eq!(key_of(""), "routes[0]");
    assert_eq!(key_of("headers = { \"X\" = \"{token:a}:{token:b}\" }"), "routes[0].headers.X");
    assert_eq!(key_of("headers = { \"X\" = \"{token:nope}\" }"), "routes[0].headers.X");
    assert_eq!(key_of("headers = { \"X\" = \"Bearer {token}\" }"), "routes[0].headers.X");
    assert_eq!(key_of("headers = { \"Connection\" = \"{token:a}\" }"), "routes[0].headers.Connection");
    assert_eq!(key_of("headers = {}"), "routes[0].headers");
    assert_eq!(key_of("basic = { username = \"u:x\", password = \"{token:a}\" }"), "routes[0].basic.username");
    assert_eq!(key_of("basic = { username = \"u\", password = \"p\" }"), "routes[0].basic");
    assert_eq!(key_of("token = \"a\"\nquery = \"a&b\""), "routes[0].query");
    let c = Config::parse(&route("headers = { \"X-A\" = \"{token:b}\", \"X-B\" = \"{token:a}\" }")).unwrap();
    assert!(unused_tokens(&c).is_empty(), "tokens named in templates are used");
}

#[test]
fn an_env_token_reads_one_variable_or_the_aws_ones() {
    let with = |token: &str| {
        format!("[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://a.example\"\ntoken = \"t\"\n[tokens.t]\nsource = \"env\"\n{token}\n")
    };
    assert!(Config::parse(&with("aws = true")).is_ok());
    assert!(Config::parse(&with("var = \"T\"")).is_ok());
    assert_eq!(errors(&with("aws = true\nvar = \"T\""))[0].key, "tokens.t.var");
    assert_eq!(errors(&with(""))[0].key, "tokens.t.var");
}

#[test]
fn intercept_needs_exactly_one_ca_and_valid_passthrough_entries() {
    let base = "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"https://a.example\"\ntoken = \"t\"\n\
                    [tokens.t]\nsource = \"env\"\nvar = \"T\"\n";
    let keys = |intercept: &str| -> Vec<(String, Option<usize>)> {
        errors(&format!("{intercept}\n{base}")).into_iter().map(|e| (e.key, e.line)).collect()
    };
    assert_eq!(keys("[intercept]\ngenerate = true\n"), [("intercept.ca_cert_out".to_owned(), Some(1))]);
    assert_eq!(keys("[intercept]\n"), [("intercept".to_owned(), Some(1))]);
    assert_eq!(
        keys("[intercept]\ngenerate = true\nca_cert_out = \"/x\"\nca_cert = { file = \"/c\" }\n"),
        [("intercept.generate".to_owned(), Some(2))]
    );
    assert_eq!(
        keys("[intercept]\ngenerate = true\nca_cert_out = \"/x\"\npassthrough = [\"ok.example\", \"bad host\"]\n"),
        [("intercept.passthrough[1]".to_owned(), Some(4))]
    );
    let missing = errors(&format!(
            "[intercept]\nca_cert = {{ file = \"/nonexistent/ca.crt\" }}\nca_key = {{ file = \"/nonexistent/ca.key\" }}\n{base}"
        ));
    assert_eq!(missing[0].key, "intercept.ca_cert");
    assert!(missing[0].message.contains("/nonexistent/ca.crt"), "{}", missing[0].message);
    let ok = Config::parse(&format!(
        "[intercept]\ngenerate = true\nca_cert_out = \"/x\"\npassthrough = [\"pypi.org\", \"h:8443\"]\n{base}"
    ))
    .unwrap();
    let i = ok.intercept.unwrap();
    assert_eq!(i.max_leaf_certs, 1024);
    assert_eq!(i.passthrough, ["pypi.org", "h:8443"]);
}

#[test]
fn reports_every_error_with_key_and_line() {
    let text = r#"
[[routes]]
name = "a"
prefix = "/a"
upstream = "https://a.example"
token = "missing"
colour = "blue"

[[routes]]
name = "a"
prefix = "/a"
upstream = "not a url"
token = "t"
format = "Bearer"

[tokens.t]
source = "file"
path = "/x"
value = "ghp_literal"
"#;
    let errs = errors(text);
    let find = |key: &str| errs.iter().find(|e| e.key == key).unwrap_or_else(|| panic!("no error for {key}: {errs:?}"));
    assert_eq!(find("routes[0].token").line, Some(6));
    assert_eq!(find("routes[0].colour").line, Some(7));
    assert_eq!(find("routes[1].name").line, Some(10));
    assert_eq!(find("routes[1].prefix").line, Some(11));
    assert_eq!(find("routes[1].upstream").line, Some(12));
    assert_eq!(find("routes[1].format").line, Some(14));
    let v = find("tokens.t.value");
    assert_eq!(v.line, Some(19));
    assert!(!format!("{errs:?}").contains("ghp_literal"));
}

#[test]
fn secret_refs_refuse_literals_without_echoing() {
    #[derive(Deserialize, Debug)]
    struct S {
        #[allow(dead_code)]
        s: SecretRef,
    }
    // toml's own Display quotes the source line; sidekey reports `message()` only.
    let e = toml::from_str::<S>("s = \"hunter2\"").unwrap_err();
    assert!(!e.message().contains("hunter2"));
    assert!(e.message().contains("reference"));
    let ok: S = toml::from_str("s = { env = \"X\" }").unwrap();
    assert_eq!(ok.s, SecretRef::Env("X".into()));
}

#[test]
fn syntax_errors_do_not_quote_the_line() {
    let errs = errors("[tokens.t]\nsource = \"env\"\nvar = ghp_secretvalue\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(3));
    assert!(!errs[0].to_string().contains("ghp_secretvalue"), "{}", errs[0]);
}

#[test]
fn every_source_of_the_contract_parses() {
    let text = r#"
[[routes]]
name = "r"
prefix = "/r"
upstream = "https://api.example"
token = "api"

[tokens.api]
source = "oauth2"
token_url = "https://idp.example/oauth2/token"
client_id = "svc-a"
client_secret = { env = "SVC_A_SECRET" }
scope = "read write"
refresh_before = "30s"
params = { resource = "https://api.example" }
validate = { url = "https://api.example/me", expect = 200 }

[tokens.vault]
source = "http"
url = "https://vault:8200/v1/secret/data/api"
headers = { "X-Vault-Token" = { file = "/var/run/vault/token" } }
pointer = "/data/data/token"
refresh = "5m"
refresh_before = "25%"

[tokens.legacy]
source = "exec"
command = ["/usr/local/bin/get-token", "--name", "legacy"]
refresh = "10m"
refresh_before = 0.1
"#;
    let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let api = &c.tokens["api"];
    assert_eq!(api.kind(), "oauth2");
    assert_eq!(api.refresh.before, RefreshBefore::Duration(Duration::from_secs(30)));
    assert_eq!(api.refresh.interval, Some(Duration::from_secs(300)));
    assert_eq!(api.validate.as_ref().unwrap().expect, 200);
    let SourceConfig::OAuth2(o) = &api.source else { panic!() };
    assert_eq!(o.auth_method, None);
    assert_eq!(o.client_secret, Some(SecretRef::Env("SVC_A_SECRET".into())));
    assert_eq!(c.tokens["vault"].refresh.before, RefreshBefore::Ratio(0.25));
    assert_eq!(c.tokens["legacy"].refresh.before, RefreshBefore::Ratio(0.1));
    assert_eq!(c.tokens["legacy"].refresh.interval, Some(Duration::from_secs(600)));
}

#[test]
fn source_errors_name_their_keys() {
    let text = r#"
[[routes]]
name = "r"
prefix = "/r"
upstream = "https://api.example"
token = "api"

[tokens.api]
source = "oauth2"
token_url = "not a url"
client_id = "a"
client_secret = "literal-secret-value"
refresh_before = "150%"

[tokens.x]
source = "exec"
command = []
validate = { url = "https://v.example", format = "Bearer" }
"#;
    let errs = errors(text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    // (token_url is checked once the entry deserializes; a bad required key stops that.)
    for k in ["tokens.api.client_secret", "tokens.api.refresh_before", "tokens.x.command", "tokens.x.validate.format"] {
        assert!(keys.contains(&k), "no error for {k}: {errs:?}");
    }
    assert!(!format!("{errs:?}").contains("literal-secret-value"));
    assert_eq!(errs.iter().find(|e| e.key == "tokens.api.client_secret").unwrap().line, Some(12));
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let open = GOOD.replace("admin = \"127.0.0.1:1\"", "admin = \"0.0.0.0:9901\"");
    let errs = errors(&open);
    assert!(
        errs.iter().any(|e| e.key == "listen.admin" && e.line == Some(4) && e.message.contains("[admin] token")),
        "{errs:?}"
    );
    let with_token = format!("{open}\n[admin]\ntoken = {{ env = \"SIDEKEY_ADMIN_TOKEN\" }}\n");
    let c = Config::parse(&with_token).unwrap();
    assert_eq!(c.admin.token, Some(SecretRef::Env("SIDEKEY_ADMIN_TOKEN".into())));
    let errs = errors(&format!("{open}\n[admin]\ntoken = \"hunter2-admin\"\n"));
    assert!(errs.iter().any(|e| e.key == "admin.token" && !e.message.contains("hunter2")), "{errs:?}");
}

#[test]
fn listen_workers_is_checked_with_key_and_line() {
    assert_eq!(Config::parse(GOOD).unwrap().listen.workers, None);
    let with =
        |n: &str| GOOD.replace("admin = \"127.0.0.1:1\"\n", &format!("admin = \"127.0.0.1:1\"\nworkers = {n}\n"));
    assert_eq!(Config::parse(&with("2")).unwrap().listen.workers, Some(2));
    for bad in ["0", "1025"] {
        let errs = errors(&with(bad));
        assert!(
            errs.iter().any(|e| e.key == "listen.workers" && e.line == Some(5) && e.message.contains("between 1 and")),
            "{bad}: {errs:?}"
        );
    }
    let errs = errors(&with("\"two\""));
    assert!(errs.iter().any(|e| e.key == "listen.workers" && e.line == Some(5)), "{errs:?}");
}

#[test]
fn limits_are_checked_with_key_and_line() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.limits, Limits::default());
    assert!(c.hardening.mlock && c.hardening.no_dump);
    let bad = format!("{GOOD}\n[limits]\nmax_header_bytes = 100\nmax_connections = 0\nidle_timeout = \"1ms\"\n");
    let errs = errors(&bad);
    for key in ["limits.max_header_bytes", "limits.max_connections", "limits.idle_timeout"] {
        assert!(errs.iter().any(|e| e.key == key && e.line.is_some()), "{key}: {errs:?}");
    }
    let off = Config::parse(&format!("{GOOD}\n[hardening]\nmlock = false\nno_dump = false\n")).unwrap();
    assert!(!off.hardening.mlock && !off.hardening.no_dump);
}

#[test]
fn identity_endpoints_off_the_host_need_https_too() {
    let exchange = |url: &str, extra: &str| {
        format!(
            "[tokens.t]\nsource = \"token_exchange\"\ntoken_url = \"{url}\"\nsubject_token = {{ file = \"/s\" }}\n\
                 subject_token_type = \"urn:ietf:params:oauth:token-type:jwt\"\n{extra}"
        )
    };
    let e = errors(&exchange("http://sts.example/token", ""));
    assert!(e.iter().any(|e| e.key == "tokens.t.token_url"), "{e:?}");
    for ok in [exchange("http://sts.example/token", "allow_plaintext = true\n"), exchange("http://127.0.0.1:9/t", "")] {
        let e = errors(&ok);
        assert!(!e.iter().any(|e| e.key == "tokens.t.token_url"), "{e:?}");
    }
    let sts = "[tokens.a]\nsource = \"aws_web_identity\"\nsts_endpoint = \"http://sts.example\"\n";
    let e = errors(sts);
    assert!(e.iter().any(|e| e.key == "tokens.a.sts_endpoint"), "{e:?}");
}

#[test]
fn plaintext_upstreams_off_the_host_need_an_explicit_yes() {
    let with = |upstream: &str, extra: &str| {
        GOOD.replace("https://api.github.com", upstream)
            .replace("token = \"gh\"\n", &format!("token = \"gh\"\n{extra}"))
    };
    let errs = errors(&with("http://api.internal.example", ""));
    assert!(errs.iter().any(|e| e.key == "routes[0].upstream" && e.message.contains("in clear")), "{errs:?}");
    assert!(Config::parse(&with("http://api.internal.example", "allow_plaintext = true\n")).is_ok());
    for local in ["http://127.0.0.1:8081", "http://localhost:9000/x", "http://[::1]:80", "http://127.3.4.5"] {
        assert!(Config::parse(&with(local, "")).is_ok(), "{local}");
    }
}

#[test]
fn prefix_rules() {
    assert!(check_prefix("/github").is_ok());
    assert!(check_prefix("/").is_ok());
    assert!(check_prefix("github").is_err());
    assert!(check_prefix("/github/").is_err());
    assert!(check_prefix("/a/../b").is_err());
}
