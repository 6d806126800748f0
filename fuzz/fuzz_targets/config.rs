//! The config parser and validator on arbitrary text: it never panics, every error names a
//! key or a line, and no error echoes the value of a secret-looking key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match sidekey::Config::parse(text) {
        Ok(config) => {
            // A valid config always has a route, and every token a route uses is defined.
            assert!(!config.routes.is_empty());
            for r in &config.routes {
                let names = r.token_names();
                assert!(!names.is_empty(), "route {} uses no token", r.name);
                for t in names {
                    assert!(config.tokens.contains_key(&t), "route {} names an undefined token", r.name);
                }
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error result with no error");
            let shown = errors.to_string();
            for e in &errors.errors {
                assert!(!e.key.is_empty() || e.line.is_some() || e.message.starts_with("no routes"), "{e:?}");
            }
            // A literal where a secret reference is due is refused without repeating it.
            for line in text.lines() {
                let Some((key, value)) = line.split_once('=') else { continue };
                let key = key.trim();
                let value = value.trim();
                let literal = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                if let Some(secret) = literal {
                    // The same word elsewhere in the text (a route's or a token's name, say)
                    // may be shown for that.
                    let elsewhere = || text.lines().any(|other| other != line && other.contains(secret));
                    if (key == "client_secret" || key == "value")
                        && secret.len() >= 8
                        && secret.chars().all(|c| c.is_ascii_alphanumeric())
                        && !elsewhere()
                    {
                        assert!(!shown.contains(secret), "an error echoes the literal of {key}");
                    }
                }
            }
        }
    }
});
