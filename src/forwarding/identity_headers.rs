//! The verified identity, as headers for the backend (DESIGN §7).
//!
//! Set after every client-sent `X-Portcullis-*` header was stripped, so a backend can
//! trust them when it is reachable only through the gateway. Where that cannot be
//! guaranteed, configure `[identity_headers] signing_secret`: every forwarded request
//! then carries `X-Portcullis-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256
//! with the secret's bytes as key over these lines joined by `\n`:
//!
//! ```text
//! v1
//! <t>
//! <X-Request-Id>
//! <METHOD>
//! <path and query as forwarded>
//! <X-Portcullis-User-Id or empty>
//! <X-Portcullis-Account-Id or empty>
//! <X-Portcullis-Roles or empty>
//! <X-Portcullis-Account-Roles or empty>
//! ```
//!
//! Anonymous requests (public routes) are signed too, with empty identity lines, so a
//! backend can also trust the absence of an identity.

use http::header::{HeaderName, HeaderValue};
use ring::hmac;

use crate::identity::Identity;

pub const USER_ID: HeaderName = HeaderName::from_static("x-portcullis-user-id");
pub const ACCOUNT_ID: HeaderName = HeaderName::from_static("x-portcullis-account-id");
pub const ROLES: HeaderName = HeaderName::from_static("x-portcullis-roles");
pub const ACCOUNT_ROLES: HeaderName = HeaderName::from_static("x-portcullis-account-roles");
pub const SIGNATURE: HeaderName = HeaderName::from_static("x-portcullis-signature");

/// Signs identity headers; built from the configured secret.
#[derive(Clone)]
pub struct IdentitySigner(hmac::Key);

impl IdentitySigner {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

/// What is signed besides the identity.
pub struct Signed<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    /// Unix seconds.
    pub now: i64,
}

/// The identity headers for a request, and the signature when a signer is configured.
pub fn identity_headers(
    identity: Option<&Identity>,
    signer: Option<&IdentitySigner>,
    signed: &Signed<'_>,
) -> Vec<(HeaderName, HeaderValue)> {
    let (user, account, roles, account_roles) = match identity {
        Some(identity) => (
            identity.user_id.to_string(),
            identity.account_id.to_string(),
            identity.roles.join(","),
            identity.account_roles.join(","),
        ),
        None => Default::default(),
    };
    let mut headers = Vec::with_capacity(5);
    if identity.is_some() {
        for (name, value) in [
            (USER_ID, &user),
            (ACCOUNT_ID, &account),
            (ROLES, &roles),
            (ACCOUNT_ROLES, &account_roles),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.push((name, value));
            }
        }
    }
    if let Some(IdentitySigner(key)) = signer {
        let now = signed.now.to_string();
        let mut context = hmac::Context::with_key(key);
        for (index, line) in [
            "v1",
            &now,
            signed.request_id,
            signed.method,
            signed.path_and_query,
            &user,
            &account,
            &roles,
            &account_roles,
        ]
        .into_iter()
        .enumerate()
        {
            if index > 0 {
                context.update(b"\n");
            }
            context.update(line.as_bytes());
        }
        let mut value = format!("t={now},v1=");
        for byte in context.sign().as_ref() {
            value.extend(
                [byte >> 4, byte & 0xf]
                    .map(|digit| char::from_digit(u32::from(digit), 16).unwrap_or('0')),
            );
        }
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.push((SIGNATURE, value));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            user_id: 7,
            account_id: 3,
            email: "ann@example.com".into(),
            roles: vec!["account-admin".into(), "consultant".into()],
            account_roles: vec!["Prosumer".into()],
        }
    }

    const SIGNED: Signed<'static> = Signed {
        request_id: "rid",
        method: "GET",
        path_and_query: "/api/v3_0/assets?page=1",
        now: 1_764_000_000,
    };

    #[test]
    fn a_verified_identity_becomes_four_headers() {
        let headers = identity_headers(Some(&identity()), None, &SIGNED);
        let get = |name: &HeaderName| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(get(&USER_ID).as_deref(), Some("7"));
        assert_eq!(get(&ACCOUNT_ID).as_deref(), Some("3"));
        assert_eq!(get(&ROLES).as_deref(), Some("account-admin,consultant"));
        assert_eq!(get(&ACCOUNT_ROLES).as_deref(), Some("Prosumer"));
        assert_eq!(get(&SIGNATURE), None, "unsigned without a secret");
        assert!(identity_headers(None, None, &SIGNED).is_empty());
    }

    #[test]
    fn the_signature_is_the_documented_hmac() {
        let secret = b"backend shared secret of 32+ bytes!";
        let signer = IdentitySigner::new(secret);
        let headers = identity_headers(Some(&identity()), Some(&signer), &SIGNED);
        let (_, value) = headers
            .iter()
            .find(|(n, _)| n == SIGNATURE)
            .expect("signed");
        let message = "v1\n1764000000\nrid\nGET\n/api/v3_0/assets?page=1\n7\n3\naccount-admin,consultant\nProsumer";
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let expected: String = hmac::sign(&key, message.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            value.to_str().expect("ascii"),
            format!("t=1764000000,v1={expected}")
        );
        // Anonymous requests are signed with empty identity lines.
        let anonymous = identity_headers(None, Some(&signer), &SIGNED);
        assert_eq!(anonymous.len(), 1);
        assert_ne!(anonymous.first().map(|(_, v)| v), Some(value));
    }
}
