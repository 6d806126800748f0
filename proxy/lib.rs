//! sidekey: a credential sidecar. A service points its HTTP client at 127.0.0.1; sidekey picks
//! the route, attaches the route's token, and forwards over TLS to the real upstream.
//!
//! The request flow, module by module:
//!
//! ```text
//! conn::serve (accept under a connection cap, h1 + h2c, slow-head and idle timeouts, drain)
//!   h1server::serve                 the common HTTP/1.1 request, its fields kept as they came
//!                                   (h1::Fields); hyper's server for the rest
//!   -> proxy::Proxy::handle
//!        route::RouteTable::find      host / absolute-form / longest prefix; never an unknown upstream
//!        token::Token::credential        one lock-free load of the current snapshot, a header clone
//!        route::strip_hop_by_hop      hop-by-hop and Proxy-Authorization dropped, Host re-derived
//!                                   (for fields kept as they came: left out when they were read)
//!        upstream::Pool               pooled upstream connections over rustls (ALPN h2 / http/1.1)
//!        h1::Conn                     an HTTP/1.1 request and its answer, with no task of its own
//!        error::ProxyError            the one place failures become 404/502/503/504 JSON
//!        metrics::RouteMetrics        handles resolved at start
//! ```
//!
//! Modules:
//! - [`config`]: the TOML file, serde structs, whole-file validation with key and line.
//! - [`secret`]: the redacted, zeroizing type every token value lives in.
//! - [`memory`]: locked pages for secrets, the zero-on-free allocator, `[hardening]`.
//! - [`token`]: the store behind arc-swap, one file per source, the file watcher.
//! - [`route`]: request -> route, path normalization, hop-by-hop headers.
//! - [`proxy`]: the data-plane service.
//! - [`policy`]: least privilege per route: allow rules, rate, in-flight cap.
//! - [`safety`]: the safe defaults a config is held to (local listeners and URLs, header names).
//! - [`upstream`]: the pooled rustls client.
//! - [`upload`]: a request body sent as it arrives, bounded by its progress (`send_timeout`).
//! - [`h1`]: sidekey's HTTP/1.1 client side (hyper's for HTTP/2).
//! - `h1server`: the proxy listener's own HTTP/1.1 loop for a request with no body; hyper's
//!   server takes a connection over from the first request it does not serve.
//! - [`error`]: typed errors and their HTTP answers.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/tokens`, the dashboard.
//! - [`admin_guard`]: what a browser could be made to send the admin API (cross-site POST, DNS rebinding).
//! - [`audit`]: the hash-chained audit log, its writer and `verify`.
//! - [`metrics`]: the Prometheus recorder and per-route handles; [`process_metrics`] the
//!   standard `process_*` families from `/proc`.
//! - [`health`]: `sidekey health`, a `/readyz` probe for container health checks.
//! - [`serve`]: assembly, listeners, config reload, graceful shutdown.
//! - [`conn`]: the accept loop and `[limits]`: connection cap, header and idle timeouts.
//! - [`workers`]: `[listen] workers`, single-threaded runtimes the proxy's connections are
//!   handed to.
//! - [`reload`]: what triggers a reload (SIGHUP, `--watch-config`).
//! - [`telemetry`]: logging setup.
//! - [`demo`]: `sidekey demo`.
//! - [`kube`]: `sidekey inject` and its admission webhook (Kubernetes).

// Unsafe code lives in one reviewed module, `memory` (page allocation, mlock, prctl, the
// allocator); everywhere else it is an error.
#![deny(unsafe_code)]

pub mod admin;
pub mod admin_guard;
pub mod audit;
pub mod aws;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod health;
pub mod http1;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub use listen::fuzz_requests;
#[doc(hidden)]
pub use listen::serve_dribbled;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub use upstream::fuzz_answer;
pub mod inject;
pub mod intercept;
pub mod kube;
pub mod listen;
pub mod live;
#[allow(unsafe_code)]
pub mod memory;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod process_metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod safety;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod upload;
pub mod upstream;
pub mod workers;

pub use config::Config;
pub use serve::{start, Running};
pub use shutdown::ShutdownSignal;
