//! Integration tests: the real gateway over TLS, in-process, against an echo backend.

mod support;

mod canonical_paths;
mod config_errors;
mod failures;
mod headers;
mod redirect;
mod responses;
mod shutdown;
