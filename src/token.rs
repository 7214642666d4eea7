//! Access-token codecs: what a token looks like and whether its signature and age
//! hold. Whether its user still exists, is active and has not revoked it is decided
//! by `identity`, which owns the directory and the caches.
//!
//! `native` is the seeds' scheme (DESIGN §3); `flask_security` is what FlexMeasures
//! issues today. Tokens arrive raw in `Authorization`
//! (FlexMeasures clients send no scheme) or as `Bearer <token>`.

pub mod flask_security;
mod native;

pub use flask_security::FlaskSecurityKeys;
pub use native::{Claims, NATIVE_EPOCH, TokenKeys, password_crypt, password_crypt_matches};

/// Longest token accepted; anything longer is refused before any decoding.
pub const MAX_TOKEN_LENGTH: usize = 2048;

/// Why a token was refused. Callers log the kind, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token issued in the future")]
    FromTheFuture,
}

/// Big-endian bytes without leading zeros: how both formats write a timestamp
/// (itsdangerous `int_to_bytes`).
fn stripped_be(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes.get(first..).unwrap_or_default().to_vec()
}

/// A timestamp written by [`stripped_be`], as base64url.
fn decode_timestamp(text: &str) -> Result<u64, TokenError> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TokenError::Malformed)?;
    if decoded.is_empty() || decoded.len() > 8 {
        return Err(TokenError::Malformed);
    }
    let mut bytes = [0u8; 8];
    bytes
        .get_mut(8 - decoded.len()..)
        .ok_or(TokenError::Malformed)?
        .copy_from_slice(&decoded);
    Ok(u64::from_be_bytes(bytes))
}

/// Checks a base64url signature over `signed`. SECURITY: ring compares in constant
/// time, and every key is tried, so the time does not tell which key (if any) nearly
/// matched.
fn verify_signature(
    keys: &[ring::hmac::Key],
    signed: &str,
    signature: &str,
) -> Result<(), TokenError> {
    use base64::Engine as _;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut valid = false;
    for key in keys {
        valid |= ring::hmac::verify(key, signed.as_bytes(), &signature).is_ok();
    }
    if valid {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

/// The token in an `Authorization` header value: the raw value, or what follows
/// `Bearer ` (any case). `None` when the header is empty or not a plausible token.
pub fn from_authorization(value: &[u8]) -> Option<&str> {
    // Tokens are ASCII: anything else is refused before it is looked into (and the
    // scan for the scheme works on bytes, in one pass).
    let value = value.trim_ascii();
    if !value.is_ascii() {
        return None;
    }
    let token = match value.iter().position(|byte| *byte == b' ') {
        Some(space) => {
            let (scheme, rest) = value.split_at(space);
            if !scheme.eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            rest.trim_ascii()
        }
        None if value.eq_ignore_ascii_case(b"bearer") => return None,
        None => value,
    };
    if token.is_empty() || token.len() > MAX_TOKEN_LENGTH {
        return None;
    }
    std::str::from_utf8(token).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::hmac;

    #[test]
    fn tokens_come_raw_or_as_bearer() {
        assert_eq!(from_authorization(b"abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(from_authorization(b"Bearer abc.def"), Some("abc.def"));
        assert_eq!(from_authorization(b"bearer   abc"), Some("abc"));
        assert_eq!(from_authorization(b"Basic dXNlcjpwdw=="), None);
        assert_eq!(from_authorization(b""), None);
        assert_eq!(from_authorization(b"Bearer "), None);
        let long = vec![b'a'; MAX_TOKEN_LENGTH + 1];
        assert_eq!(from_authorization(&long), None);
        assert_eq!(from_authorization(b" Bearer\tabc "), Some("Bearer\tabc"));
        assert_eq!(from_authorization(b"Token abc"), None);
        assert_eq!(from_authorization("Bearer abc\u{e9}".as_bytes()), None);
        assert_eq!(from_authorization(b"Bearer abc\xff"), None);
    }

    /// SECURITY: the algorithm is the key's, never the token's. A tag made with the
    /// right key bytes under another HMAC, a cut or lengthened tag, or none, fails.
    #[test]
    fn only_the_keys_own_algorithm_and_whole_tag_verify() {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let secret = b"the key bytes, shared by every algorithm here";
        let signed = "payload.timestamp";
        for algorithm in [hmac::HMAC_SHA256, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY] {
            let keys = [hmac::Key::new(algorithm, secret)];
            let tag = hmac::sign(&keys[0], signed.as_bytes());
            assert_eq!(verify_signature(&keys, signed, &b64(tag.as_ref())), Ok(()));
            for other in [
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                hmac::HMAC_SHA256,
                hmac::HMAC_SHA384,
                hmac::HMAC_SHA512,
            ] {
                if other == algorithm {
                    continue;
                }
                let forged = hmac::sign(&hmac::Key::new(other, secret), signed.as_bytes());
                assert_eq!(
                    verify_signature(&keys, signed, &b64(forged.as_ref())),
                    Err(TokenError::BadSignature),
                    "{other:?} passed for {algorithm:?}"
                );
            }
            let whole = tag.as_ref();
            let mut longer = whole.to_vec();
            longer.push(0);
            for cut in [
                &whole[..whole.len() - 1],
                &whole[..16],
                &whole[..1],
                &[][..],
                longer.as_slice(),
            ] {
                assert_eq!(
                    verify_signature(&keys, signed, &b64(cut)),
                    Err(TokenError::BadSignature),
                    "a tag of {} bytes passed",
                    cut.len()
                );
            }
        }
    }
}
