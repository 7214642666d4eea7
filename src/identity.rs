//! Third stage of the flow: who is calling.
//!
//! Turns the credentials on a request into a [`Caller`]. No credential verifier is
//! configured yet (users, tokens and sessions arrive with the directory), so every
//! caller is anonymous and only `public` routes can be reached: `authorize` refuses
//! the rest. That keeps the gateway closed by default while it grows.

use crate::route::Route;

/// Who is making a request, as far as the gateway has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential was presented or verified.
    Anonymous,
}

/// Identifies the caller of a request to `route`.
pub fn identify(_route: &Route, _headers: &http::HeaderMap) -> Caller {
    Caller::Anonymous
}
