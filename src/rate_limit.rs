//! Fourth stage of the flow: whether the caller may make another request now.
//!
//! Limits are declared as classes per route and enforced per client, user, account and
//! route. No limit class exists in this configuration format yet, so the set of limits
//! that apply to any request is empty and every request passes this stage.

use crate::identity::Caller;
use crate::rejection::Rejection;

/// The limits in force. Empty: no limit classes are configured.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {}

impl RateLimits {
    /// Checks (and counts) a request against every limit that applies to it.
    pub fn check(&self, _route: &str, _caller: &Caller) -> Result<(), Rejection> {
        Ok(())
    }
}
