//! Login lockouts: brute-force protection beyond the rate limits (DESIGN §6).
//!
//! At a login endpoint every attempt counts against the `login` limits, checked
//! before any password is. Failed attempts also count against `login_failures`;
//! the attempt that exceeds one of those locks its key (`login=NAME`, `ip=ADDRESS`,
//! or both joined with `|`) out for `lockout`. While a lockout holds, attempts under
//! that key are refused with 429 before the password is checked, so a correct
//! guess gains nothing.
//!
//! Lockouts are stored in the directory's database, where every instance and the
//! `portcullis lockout list|lift` commands see them. Unknown login names are counted
//! and locked like known ones, so a lockout says nothing about whether a user exists.
//!
//! Trade-off, stated for operators: a per-login lockout lets anyone lock a user out
//! for `lockout` by failing on purpose; it ends by itself, `lockout lift` ends it
//! early, and `login_failures` may count per `ip+login` instead to avoid it.

use std::net::IpAddr;

/// A key that may not log in until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub key: String,
    /// Unix seconds.
    pub until: i64,
    /// Which limit was exceeded, for operators.
    pub reason: String,
    /// Unix seconds.
    pub created: i64,
}

impl Lockout {
    pub fn from_row((key, until, reason, created): (String, i64, String, i64)) -> Self {
        Self {
            key,
            until,
            reason,
            created,
        }
    }
}

/// The lockout key of an address, as the gateway writes it.
pub fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    format!("ip={}", super::network(ip, ipv6_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_match_the_limits_keys() {
        let ip: IpAddr = "2001:db8::1:2".parse().expect("ip");
        let limit = crate::rate_limit::spec::parse("1/s per ip")
            .expect("valid")
            .remove(0);
        let subject = crate::rate_limit::Subject {
            ip,
            user: None,
            account: None,
            route: "r",
            login: None,
        };
        assert_eq!(ip_key(ip, 64), subject.key(&limit, 64));
        assert_eq!(ip_key(ip, 64), "ip=2001:db8::");
    }
}
