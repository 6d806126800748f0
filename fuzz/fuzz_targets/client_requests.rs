//! What a client sends to the proxy listener: the input's first byte picks the listener's
//! limits, the rest is every byte the client sends before closing its side. sidekey's own
//! HTTP/1.1 loop serves what it can and hands the rest to hyper; whatever the bytes, it ends
//! without a panic, and a hand-over carries exactly the bytes after those it served.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sidekey::fuzz_requests(data);
});
