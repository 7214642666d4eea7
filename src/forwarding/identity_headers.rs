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

use data_encoding::HEXLOWER;
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
    // Each value is written once, into the buffer the header value keeps.
    let [user, account, roles, account_roles] = match identity {
        Some(identity) => [
            decimal(identity.user_id),
            decimal(identity.account_id),
            joined(&identity.roles),
            joined(&identity.account_roles),
        ],
        None => Default::default(),
    };
    let signature = signer.map(|IdentitySigner(key)| {
        let mut now = itoa::Buffer::new();
        let now = now.format(signed.now);
        let mut context = hmac::Context::with_key(key);
        context.update(b"v1");
        for line in [
            now.as_bytes(),
            signed.request_id.as_bytes(),
            signed.method.as_bytes(),
            signed.path_and_query.as_bytes(),
            &user,
            &account,
            &roles,
            &account_roles,
        ] {
            context.update(b"\n");
            context.update(line);
        }
        let tag = context.sign();
        let hex = HEXLOWER.encode_len(tag.as_ref().len());
        let mut value = Vec::with_capacity(6 + now.len() + hex);
        value.extend_from_slice(b"t=");
        value.extend_from_slice(now.as_bytes());
        value.extend_from_slice(b",v1=");
        let start = value.len();
        value.resize(start + hex, 0);
        if let Some(digits) = value.get_mut(start..) {
            HEXLOWER.encode_mut(tag.as_ref(), digits);
        }
        value
    });
    let mut headers = Vec::with_capacity(5);
    // A value a header cannot carry (a control character in a role name) is left
    // out; the signature still covers it.
    let mut push = |name: HeaderName, value: Vec<u8>| {
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.push((name, value));
        }
    };
    if identity.is_some() {
        push(USER_ID, user);
        push(ACCOUNT_ID, account);
        push(ROLES, roles);
        push(ACCOUNT_ROLES, account_roles);
    }
    if let Some(signature) = signature {
        push(SIGNATURE, signature);
    }
    headers
}

fn decimal(id: i64) -> Vec<u8> {
    itoa::Buffer::new().format(id).as_bytes().to_vec()
}

/// Names joined by commas. Every value here is sized exactly: `Bytes` keeps such a
/// buffer as it is, where a larger one costs it another allocation.
fn joined(names: &[String]) -> Vec<u8> {
    let commas = names.len().saturating_sub(1);
    let mut text = Vec::with_capacity(names.iter().map(String::len).sum::<usize>() + commas);
    for (index, name) in names.iter().enumerate() {
        if index > 0 {
            text.push(b',');
        }
        text.extend_from_slice(name.as_bytes());
    }
    text
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
        assert_eq!(
            value.to_str().expect("ascii"),
            signature_over(secret, message)
        );
        // Anonymous requests are signed with empty identity lines.
        let anonymous = identity_headers(None, Some(&signer), &SIGNED);
        assert_eq!(anonymous.len(), 1);
        assert_ne!(anonymous.first().map(|(_, v)| v), Some(value));
    }

    fn signature_over(secret: &[u8], message: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag: String = hmac::sign(&key, message.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("t=1764000000,v1={tag}")
    }

    fn value_of<'a>(
        headers: &'a [(HeaderName, HeaderValue)],
        name: &HeaderName,
    ) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    /// Anonymous requests: empty identity lines. A role name no header can carry:
    /// the header is left out, and the signature still covers the name, so a
    /// backend cannot take the missing header for no roles.
    #[test]
    fn the_signature_covers_empty_and_unsendable_identity_lines() {
        let secret = b"backend shared secret of 32+ bytes!";
        let signer = IdentitySigner::new(secret);
        let anonymous = identity_headers(None, Some(&signer), &SIGNED);
        assert_eq!(anonymous.len(), 1);
        assert_eq!(
            value_of(&anonymous, &SIGNATURE),
            Some(
                signature_over(
                    secret,
                    "v1\n1764000000\nrid\nGET\n/api/v3_0/assets?page=1\n\n\n\n"
                )
                .as_str()
            )
        );
        let mut odd = identity();
        odd.roles = vec!["line\nbreak".into()];
        odd.account_roles = Vec::new();
        let headers = identity_headers(Some(&odd), Some(&signer), &SIGNED);
        assert_eq!(value_of(&headers, &ROLES), None);
        assert_eq!(value_of(&headers, &USER_ID), Some("7"));
        assert_eq!(value_of(&headers, &ACCOUNT_ROLES), Some(""));
        assert_eq!(
            value_of(&headers, &SIGNATURE),
            Some(
                signature_over(
                    secret,
                    "v1\n1764000000\nrid\nGET\n/api/v3_0/assets?page=1\n7\n3\nline\nbreak\n"
                )
                .as_str()
            )
        );
    }
}
