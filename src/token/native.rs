//! The seeds' token: `payload.timestamp.signature`, each URL-safe base64 without
//! padding (DESIGN §3).
//!
//! - payload: JSON `{"uid": <user id>, "pwh": <sha256_crypt of the user's password
//!   hash>}`, so changing the password invalidates every earlier token;
//! - timestamp: seconds since 2011-01-01T00:00:00Z, big-endian, leading zero bytes
//!   stripped;
//! - signature: HMAC-SHA256 over `payload.timestamp` (the encoded text) with a key
//!   derived from a configured secret. Several secrets verify; the first signs.
//!
//! [`TokenKeys::decode`] checks the signature (constant time, every key) and the age
//! only; it never runs the slow sha256_crypt check, so forged tokens cost microseconds.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::{MAX_TOKEN_LENGTH, TokenError, decode_timestamp, stripped_be, verify_signature};
use crate::secret::Secret;

/// 2011-01-01T00:00:00Z in Unix seconds: the seeds' token epoch.
pub const NATIVE_EPOCH: i64 = 1_293_840_000;

/// Domain separation: the same secret never signs anything else with the same key.
const KEY_CONTEXT: &[u8] = b"portcullis native token v1";

/// What a token says, once its signature and age were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: i64,
    /// sha256_crypt of the user's password hash at issue time.
    pub password_crypt: String,
    /// Unix seconds.
    pub issued_at: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    uid: i64,
    pwh: String,
}

/// The signing keys and the age rules.
pub struct TokenKeys {
    keys: Vec<hmac::Key>,
    max_age: i64,
    clock_skew: i64,
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

impl TokenKeys {
    /// Keys from secrets, first one signing. `None` when there are none.
    pub fn new(
        secrets: &[Secret<Vec<u8>>],
        max_age: Duration,
        clock_skew: Duration,
    ) -> Option<Self> {
        if secrets.is_empty() {
            return None;
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                let derive = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
                let derived = hmac::sign(&derive, KEY_CONTEXT);
                hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
            })
            .collect();
        Some(Self {
            keys,
            max_age: seconds(max_age),
            clock_skew: seconds(clock_skew),
        })
    }

    /// The keys a configuration names; `None` without secrets.
    pub fn from_settings(settings: &crate::config::TokenSettings) -> Option<Self> {
        let secrets: Vec<Secret<Vec<u8>>> = settings
            .secrets
            .iter()
            .map(|(_, secret)| secret.clone())
            .collect();
        Self::new(&secrets, settings.max_age, settings.clock_skew)
    }

    pub fn max_age(&self) -> i64 {
        self.max_age
    }

    /// A token for `user_id` issued at `issued_at` (Unix seconds), binding
    /// `password_crypt` (from [`password_crypt`]).
    pub fn issue(&self, user_id: i64, password_crypt: &str, issued_at: i64) -> String {
        let payload = serde_json::to_vec(&Payload {
            uid: user_id,
            pwh: password_crypt.to_owned(),
        })
        .unwrap_or_default();
        let since_epoch = u64::try_from(issued_at.saturating_sub(NATIVE_EPOCH)).unwrap_or(0);
        let mut signed = URL_SAFE_NO_PAD.encode(payload);
        signed.push('.');
        signed.push_str(&URL_SAFE_NO_PAD.encode(stripped_be(since_epoch)));
        let signature = self
            .keys
            .first()
            .map(|key| hmac::sign(key, signed.as_bytes()))
            .map(|tag| URL_SAFE_NO_PAD.encode(tag.as_ref()))
            .unwrap_or_default();
        signed.push('.');
        signed.push_str(&signature);
        signed
    }

    /// Verifies the signature (with every key), then the age against `now` (Unix
    /// seconds): at most `max_age` old and at most `clock_skew` in the future.
    pub fn decode(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LENGTH {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (payload, timestamp) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        verify_signature(&self.keys, signed, signature)?;
        let since_epoch =
            i64::try_from(decode_timestamp(timestamp)?).map_err(|_| TokenError::Malformed)?;
        let issued_at = NATIVE_EPOCH
            .checked_add(since_epoch)
            .ok_or(TokenError::Malformed)?;
        if issued_at > now.saturating_add(self.clock_skew) {
            return Err(TokenError::FromTheFuture);
        }
        if now.saturating_sub(issued_at) > self.max_age {
            return Err(TokenError::Expired);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let payload: Payload =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        Ok(Claims {
            user_id: payload.uid,
            password_crypt: payload.pwh,
            issued_at,
        })
    }
}

/// sha256_crypt (5000 rounds, random salt) of a password hash, for a token payload.
/// Slow by design; run it on the blocking pool.
pub fn password_crypt(password_hash: &str) -> String {
    use sha_crypt::{PasswordHasher as _, ShaCrypt};
    let mut salt = [0u8; 12];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).is_err() {
        return String::new();
    }
    ShaCrypt::SHA256
        .hash_password_with_salt(password_hash.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_default()
}

/// Whether `password_crypt` (from a verified token) was made from `password_hash`.
/// Slow by design; run it on the blocking pool.
pub fn password_crypt_matches(password_crypt: &str, password_hash: &str) -> bool {
    use sha_crypt::{PasswordVerifier as _, ShaCrypt};
    !password_crypt.is_empty()
        && ShaCrypt::SHA256
            .verify_password(password_hash.as_bytes(), password_crypt)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000;

    fn keys(secrets: &[&str]) -> TokenKeys {
        let secrets: Vec<_> = secrets
            .iter()
            .map(|s| Secret::new(s.as_bytes().to_vec()))
            .collect();
        TokenKeys::new(
            &secrets,
            Duration::from_secs(21_600),
            Duration::from_secs(30),
        )
        .expect("keys")
    }

    #[test]
    fn a_token_round_trips() {
        let keys = keys(&["first secret, at least thirty-two bytes"]);
        let token = keys.issue(42, "$5$salt$hash", NOW);
        let claims = keys.decode(&token, NOW).expect("valid");
        assert_eq!(
            claims,
            Claims {
                user_id: 42,
                password_crypt: "$5$salt$hash".into(),
                issued_at: NOW
            }
        );
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='), "no padding");
    }

    #[test]
    fn the_timestamp_counts_seconds_since_2011() {
        let keys = keys(&["first secret, at least thirty-two bytes"]);
        let token = keys.issue(1, "x", NATIVE_EPOCH + 0x0102);
        let timestamp = token.split('.').nth(1).expect("timestamp");
        assert_eq!(URL_SAFE_NO_PAD.decode(timestamp).expect("b64"), vec![1, 2]);
    }

    #[test]
    fn tampering_with_any_part_breaks_the_signature() {
        let keys = keys(&["first secret, at least thirty-two bytes"]);
        let token = keys.issue(42, "$5$salt$hash", NOW);
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"uid":1,"pwh":"$5$salt$hash"}"#);
        let later = URL_SAFE_NO_PAD.encode((NOW + 100 - NATIVE_EPOCH).to_be_bytes());
        let mut flipped = parts.get(2).expect("sig").as_bytes().to_vec();
        if let Some(byte) = flipped.first_mut() {
            *byte = if *byte == b'A' { b'B' } else { b'A' };
        }
        let flipped = String::from_utf8(flipped).expect("utf8");
        let tampered = [
            format!("{forged_payload}.{}.{}", parts[1], parts[2]),
            format!("{}.{later}.{}", parts[0], parts[2]),
            format!("{}.{}.{flipped}", parts[0], parts[1]),
        ];
        for token in tampered {
            assert_eq!(
                keys.decode(&token, NOW),
                Err(TokenError::BadSignature),
                "{token}"
            );
        }
        for malformed in ["", "a.b", "a.b.c!", &format!("{}.{}", parts[0], parts[1])] {
            assert!(keys.decode(malformed, NOW).is_err(), "{malformed}");
        }
    }

    #[test]
    fn age_is_checked_at_the_boundary() {
        let keys = keys(&["first secret, at least thirty-two bytes"]);
        let token = keys.issue(42, "h", NOW);
        assert!(keys.decode(&token, NOW + 21_600).is_ok(), "exactly max age");
        assert_eq!(keys.decode(&token, NOW + 21_601), Err(TokenError::Expired));
    }

    #[test]
    fn future_timestamps_beyond_the_skew_are_refused() {
        let keys = keys(&["first secret, at least thirty-two bytes"]);
        let token = keys.issue(42, "h", NOW + 30);
        assert!(keys.decode(&token, NOW).is_ok(), "within skew");
        let token = keys.issue(42, "h", NOW + 31);
        assert_eq!(keys.decode(&token, NOW), Err(TokenError::FromTheFuture));
    }

    #[test]
    fn a_wrong_key_fails_and_rotated_keys_still_verify() {
        let old = keys(&["old secret, at least thirty-two bytes long"]);
        let rotated = keys(&[
            "new secret, at least thirty-two bytes long",
            "old secret, at least thirty-two bytes long",
        ]);
        let stranger = keys(&["someone else's secret of thirty-two bytes"]);
        let token = old.issue(7, "h", NOW);
        assert!(
            rotated.decode(&token, NOW).is_ok(),
            "old tokens survive rotation"
        );
        assert_eq!(stranger.decode(&token, NOW), Err(TokenError::BadSignature));
        let fresh = rotated.issue(7, "h", NOW);
        assert_eq!(
            old.decode(&fresh, NOW),
            Err(TokenError::BadSignature),
            "new key signs"
        );
    }

    #[test]
    fn the_password_crypt_binds_the_password_hash() {
        let crypt = password_crypt("$2b$12$abcdefghijklmnopqrstuv");
        assert!(crypt.starts_with("$5$"), "{crypt}");
        assert!(password_crypt_matches(
            &crypt,
            "$2b$12$abcdefghijklmnopqrstuv"
        ));
        assert!(!password_crypt_matches(&crypt, "$2b$12$another-hash"));
        assert!(!password_crypt_matches("", "$2b$12$abcdefghijklmnopqrstuv"));
        assert!(!password_crypt_matches("garbage", "x"));
    }
}
