//! The web login's keys, derived from `[web_login] secret`: one signs CSRF tokens,
//! one seals TOTP secrets at rest (AES-256-GCM), so a copy of the database alone
//! does not give away anyone's authenticator.

use base64::Engine as _;
use ring::{aead, hmac};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub struct Keys {
    csrf: hmac::Key,
    seal: aead::LessSafeKey,
}

/// A sealed value could not be opened: another key, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value does not open with this key")]
pub struct Unsealable;

impl Keys {
    /// Derives both keys from the configured secret (HMAC-SHA256 with a label each,
    /// so neither key can stand in for the other).
    pub fn derive(secret: &[u8]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |label: &[u8]| hmac::sign(&root, label);
        let csrf = hmac::Key::new(
            hmac::HMAC_SHA256,
            derive(b"portcullis web-login csrf v1").as_ref(),
        );
        let seal_bytes = derive(b"portcullis web-login seal v1");
        let seal = aead::UnboundKey::new(&aead::AES_256_GCM, seal_bytes.as_ref())
            .map(aead::LessSafeKey::new)
            .unwrap_or_else(|_| unreachable_key());
        Self { csrf, seal }
    }

    /// The form token that goes with a CSRF cookie value: HMAC of it, so a page
    /// from another site cannot make one without reading the cookie.
    pub fn csrf_token(&self, cookie: &str) -> String {
        B64.encode(hmac::sign(&self.csrf, cookie.as_bytes()).as_ref())
    }

    /// SECURITY: constant-time comparison of a submitted form token.
    pub fn csrf_matches(&self, cookie: &str, token: &str) -> bool {
        let Ok(tag) = B64.decode(token) else {
            return false;
        };
        hmac::verify(&self.csrf, cookie.as_bytes(), &tag).is_ok()
    }

    /// `base64(nonce ‖ ciphertext ‖ tag)`, the nonce random (96 bits; a few secrets
    /// per user over the key's life stay far below the collision bound).
    pub fn seal(&self, plain: &[u8], context: &str) -> String {
        let mut nonce = [0u8; aead::NONCE_LEN];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
        let mut data = plain.to_vec();
        let sealed = self.seal.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(context.as_bytes()),
            &mut data,
        );
        if sealed.is_err() {
            // Only for inputs beyond AES-GCM's length limit, which secrets never reach.
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        B64.encode(out)
    }

    /// Opens what [`Keys::seal`] made with the same `context` (the user it belongs
    /// to, so a sealed secret cannot be moved to another user).
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, Unsealable> {
        let bytes = B64.decode(sealed).map_err(|_| Unsealable)?;
        if bytes.len() < aead::NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, rest) = bytes.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut data = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, aead::Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| Unsealable)?;
        Ok(plain.to_vec())
    }
}

/// AES-256 takes any 32 bytes, which an HMAC-SHA256 tag always is.
#[expect(clippy::panic, reason = "a 32-byte key is always a valid AES-256 key")]
fn unreachable_key() -> aead::LessSafeKey {
    panic!("AES-256-GCM rejected a 32-byte key")
}

/// Random bytes as URL-safe base64: session ids, CSRF cookies, codes' salts.
pub fn random_text(bytes: usize) -> String {
    let mut random = vec![0u8; bytes];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    B64.encode(random)
}

/// Whether `value` could be what [`random_text`] made of `bytes` random bytes:
/// exactly that many URL-safe base64 characters, nothing else.
pub fn is_random_text(value: &str, bytes: usize) -> bool {
    value.len() == (bytes * 4).div_ceil(3)
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// SHA-256 as lower-case hex: how session ids, codes and recovery codes are stored.
pub fn digest_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    data_encoding::HEXLOWER.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn csrf_token_matches_only_its_cookie() {
        let keys = keys();
        let token = keys.csrf_token("cookie-a");
        assert!(keys.csrf_matches("cookie-a", &token));
        assert!(!keys.csrf_matches("cookie-b", &token));
        assert!(!keys.csrf_matches("cookie-a", ""));
        assert!(!keys.csrf_matches("cookie-a", "not base64 !"));
        let other = Keys::derive(b"another secret of thirty-two bytes!!");
        assert!(!other.csrf_matches("cookie-a", &token));
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let keys = keys();
        let sealed = keys.seal(b"totp secret", "user:7");
        assert_ne!(sealed, keys.seal(b"totp secret", "user:7"), "nonces differ");
        assert_eq!(keys.open(&sealed, "user:7"), Ok(b"totp secret".to_vec()));
        assert_eq!(keys.open(&sealed, "user:8"), Err(Unsealable));
        let other = Keys::derive(b"another secret of thirty-two bytes!!");
        assert_eq!(other.open(&sealed, "user:7"), Err(Unsealable));
        let mut tampered = sealed.into_bytes();
        if let Some(byte) = tampered.get_mut(20) {
            *byte = if *byte == b'A' { b'B' } else { b'A' };
        }
        let tampered = String::from_utf8(tampered).unwrap_or_default();
        assert_eq!(keys.open(&tampered, "user:7"), Err(Unsealable));
    }
}
