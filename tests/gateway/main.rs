//! Integration tests: the real gateway over TLS, in-process, against an echo backend.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a failed expectation is a failed test"
)]

mod support;
mod users;

mod admin;
mod audit;
mod browser;
mod canonical_paths;
mod certificates;
mod config_errors;
mod demo;
mod directory_cli;
mod failures;
mod faults;
mod flexmeasures;
mod headers;
mod keepalive;
mod no_secrets;
mod policies;
mod rate_limits;
mod redirect;
mod responses;
mod shutdown;
mod smuggling;
mod soak;
mod tls_profile;
mod tokens;
mod web_login;
