//! Portcullis: a TLS-terminating reverse-proxy authentication gateway.
//!
//! Every request over TLS passes these stages, in this order, before any backend sees it:
//!
//! ```text
//! client ──TLS──▶ canonicalize ─▶ strip ─▶ route ─▶ identify ─▶ rate limit ─▶ authorize ─▶ forward ─▶ respond
//! plain HTTP ──▶ 308 to https
//! ```
//!
//! The modules below are declared in that order. Only `proxy`, `server`, `tls` and
//! `redirect` know pingora; the others are plain Rust, tested on their own.

pub mod config;
pub mod secret;

pub mod audit;
pub mod canonical;
pub mod forwarding;
pub mod framing;
pub mod identity;
pub mod login;
pub mod policy;
pub mod rate_limit;
pub mod rejection;
pub mod route;
pub mod token;

pub mod proxy;
pub mod redirect;
pub mod server;
pub mod tls;

pub mod directory;
pub mod store;

pub mod cli;
pub mod demo;
pub mod dev_certs;
pub mod metrics;
pub mod telemetry;
