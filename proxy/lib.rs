//! sidekey: a credential sidecar. A service points its HTTP client at 127.0.0.1; sidekey picks
//! the route, attaches the route's token, and forwards over TLS to the real upstream.
//!
//! The request flow, top to bottom:
//!
//! ```text
//! listen::serve            accept under a connection cap; h1 + h2c; slow-head and idle timeouts; drain
//!   listen::h1             the common HTTP/1.1 request, its fields kept as they came (http1::Fields);
//!                          hyper's server for the rest of a connection (and for HTTP/2)
//!   -> proxy::Proxy        the handler:
//!        route             request -> route (host, absolute form, longest prefix); never an unknown upstream
//!        policy            allow rules, rate, in-flight cap: refuse before anything is forwarded
//!        token             one lock-free load of the current value's rendered header
//!        inject::attach    THE ONE PLACE a credential enters a request (every form, every path)
//!        upstream::Pool    pooled connections over rustls; HTTP/1.1 by upstream::h1, HTTP/2 by hyper
//!        error             the one place failures become 4xx/5xx JSON answers
//! ```
//!
//! Where rotation happens: [`token`]: `token/cell.rs` the value readers load, swapped whole
//! behind arc-swap; `token/refresher.rs` fetch, validate, publish (its timing in
//! `token::schedule`); `token/observers.rs` 401s and usage; one file per source, the file watcher.
//!
//! Modules, bottom to top (each uses only those above it in this list):
//! - [`memory`], [`secret`]: locked pages, the zero-on-free allocator, the redacted secret.
//! - [`headers`], [`pki`], [`safety`], [`shutdown`]: hop-by-hop fields, certificates and trust
//!   roots, what counts as local, the stop signal.
//! - [`config`]: the TOML model, loading with key and line, validation; pure syntax (templates,
//!   host:port, paths, allow rules and rates), no runtime module.
//! - [`audit`], [`metrics`], `process_metrics`, [`telemetry`]: what the operator sees.
//! - [`http1`]: HTTP/1.1 without I/O (fields as they came, the answer head, the one body
//!   decoder `http1::chunked`, the limits `http1::Limits`, numbers, socket helpers). [`body`]:
//!   the one body type. [`upload`]: a streamed body's inactivity bound.
//! - [`upstream`]: the pool, TLS, HTTP/1.1 exchange and HTTP/2; `upstream::ProxyBody`.
//! - [`route`]: request -> route. [`error`]: typed errors and their answers. [`token`]: values,
//!   sources, refresh.
//! - [`policy`] (`admit`: allow rules compiled from config's, rate, in-flight cap), [`inject`]
//!   (`attach`, Basic, SigV4), [`intercept`] (CONNECT, the local CA's leaves).
//! - [`proxy`]: the data-plane handler. [`listen`], [`workers`]: accept loops and guards.
//! - [`admin`], `admin_guard`, [`live`]: the admin API over the running state.
//! - [`serve`], [`reload`], [`demo`], [`health`]: assembly, reload, the demo, `sidekey health`.
//! - [`kube`]: `sidekey inject` and its webhook (stands alone).

// Unsafe code lives in one reviewed module, `memory` (page allocation, mlock, prctl, the
// allocator); everywhere else it is an error.
#![deny(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod admin_guard;
pub mod audit;
pub(crate) mod body;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub(crate) mod headers;
pub mod health;
pub mod http1;
#[doc(hidden)]
pub use listen::serve_dribbled;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub use listen::{fuzz_own_loop_vs_hyper, fuzz_requests};
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub use upstream::fuzz_answer;
pub(crate) mod inject;
pub(crate) mod intercept;
pub mod kube;
pub mod listen;
pub(crate) mod live;
#[allow(unsafe_code)]
pub mod memory;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod process_metrics;
pub(crate) mod proxy;
pub mod reload;
pub mod route;
pub(crate) mod safety;
pub mod secret;
pub(crate) mod serve;
pub(crate) mod shutdown;
pub mod telemetry;
pub mod token;
pub(crate) mod upload;
pub mod upstream;
pub(crate) mod workers;

pub use config::Config;
pub use serve::{start, Running};
pub use shutdown::ShutdownSignal;
