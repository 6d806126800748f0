//! An upstream's answer on a pooled HTTP/1.1 connection: the input's first byte picks the
//! request (odd: HEAD, even: GET), the rest is everything the upstream sends before closing.
//! sidekey's own client reads it as the pool does (head, framing, body); whatever the bytes,
//! it answers or refuses without a panic, and a body framed by one `Content-Length` comes out
//! of exactly that length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sidekey::fuzz_answer(data);
});
