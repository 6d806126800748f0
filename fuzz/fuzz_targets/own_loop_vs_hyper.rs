//! What a client sends to the proxy listener, served twice: as production serves it (sidekey's
//! own HTTP/1.1 loop, hyper's server from its hand-over on) and by hyper's server alone, each
//! with a handler that records every request whole. Fails where the two disagree on which
//! requests are served or on their framing (heads, where each body ends, its bytes), but for
//! the known differences `sidekey::fuzz_own_loop_vs_hyper` names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sidekey::fuzz_own_loop_vs_hyper(data);
});
