//! Header format templates: rendering `format` with a token value. Input: the format, a NUL
//! byte, the value. The result is exactly every `{token}` replaced by the value, marked
//! sensitive, or an error when that would not be a valid header value; the secret's Debug
//! and Display never show it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::secret::Secret;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let (format, value) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"tok"[..]),
    };
    let Ok(format) = std::str::from_utf8(format) else { return };
    let Ok(secret) = Secret::from_bytes_trimmed(Zeroizing::new(value.to_vec())) else { return };
    let expected = format.replace("{token}", secret.expose());
    match secret.render_header(format) {
        Ok(header) => {
            assert_eq!(header.as_bytes(), expected.as_bytes());
            assert!(header.is_sensitive());
        }
        Err(_) => {
            let bad = |b: u8| b != b'\t' && (b < 0x20 || b == 0x7f);
            assert!(expected.bytes().any(bad), "a valid header value was refused");
        }
    }
    let shown = format!("{secret:?} {secret}");
    if secret.expose().len() >= 4 && !"Secret(<redacted>) <redacted>".contains(secret.expose()) {
        assert!(!shown.contains(secret.expose()), "Debug or Display shows the value");
    }
});
