//! The tokens FlexMeasures issues today (Flask-Security-Too ≥ 4, itsdangerous 2.x),
//! and its password hashes (DESIGN §2–3).
//!
//! A token is itsdangerous's `URLSafeTimedSerializer` output:
//! `payload.timestamp.signature`, URL-safe base64 without padding, where
//! - payload is compact JSON, or `.` + zlib-compressed JSON when that is shorter:
//!   `{"ver":"5","uid":<fs_uniquifier>,"fs_paa":<float>,"exp":<int>}` (v5),
//!   `[<fs_uniquifier>]` (v4) or `[<id>, <hash>, <fs_uniquifier>]` (v3);
//! - timestamp is Unix seconds, big-endian, leading zero bytes stripped;
//! - signature is HMAC-SHA1 over `payload.timestamp` with the key
//!   `SHA1(salt + b"signer" + SECRET_KEY)` (itsdangerous's "django-concat"
//!   derivation), salt `remember-salt` by default.
//!
//! The signature is found after the *last* `.`, the timestamp after the one before.
//! `SECRET_KEY` and every `SECRET_KEY_FALLBACKS` entry verify; `SECRET_KEY` signs.
//!
//! Passwords: Flask-Security stores `bcrypt` or `argon2` of
//! `base64(HMAC-SHA512(key = SECURITY_PASSWORD_SALT, msg = password))`; bcrypt sees
//! only the first 72 bytes of that 88-byte text. Any other stored format is refused,
//! never compared as plain text.

use std::io::Read as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::{digest, hmac};
use serde::Serialize;

use super::{MAX_TOKEN_LENGTH, TokenError, decode_timestamp, stripped_be, verify_signature};
use crate::secret::Secret;

/// Flask-Security's `SECURITY_REMEMBER_SALT` default, which signs auth tokens.
pub const DEFAULT_SALT: &str = "remember-salt";

/// Largest payload accepted after decompression (a zlib bomb stops here).
const MAX_PAYLOAD: u64 = 16 * 1024;

/// What a FlexMeasures token names, once its signature and age held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `fm_user.fs_uniquifier`.
    pub uniquifier: String,
    /// v3 tokens also carry the user id; it must match the user found.
    pub user_id: Option<i64>,
    /// Unix seconds.
    pub issued_at: i64,
}

/// The signing keys (`SECRET_KEY` first, then its fallbacks) and the age rules.
pub struct FlaskSecurityKeys {
    keys: Vec<hmac::Key>,
    max_age: i64,
    clock_skew: i64,
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// itsdangerous `Signer.derive_key` with `key_derivation="django-concat"`.
fn derive(secret: &[u8], salt: &[u8]) -> hmac::Key {
    let mut context = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(salt);
    context.update(b"signer");
    context.update(secret);
    hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        context.finish().as_ref(),
    )
}

#[derive(Serialize)]
struct PayloadV5<'a> {
    ver: &'static str,
    uid: &'a str,
    fs_paa: f64,
    exp: i64,
}

impl FlaskSecurityKeys {
    /// Keys from `SECRET_KEY` and its fallbacks (as bytes); `None` without any.
    pub fn new(
        secret_keys: &[Secret<Vec<u8>>],
        salt: &str,
        max_age: Duration,
        clock_skew: Duration,
    ) -> Option<Self> {
        if secret_keys.is_empty() {
            return None;
        }
        Some(Self {
            keys: secret_keys
                .iter()
                .map(|secret| derive(secret.expose(), salt.as_bytes()))
                .collect(),
            max_age: seconds(max_age),
            clock_skew: seconds(clock_skew),
        })
    }

    pub fn max_age(&self) -> i64 {
        self.max_age
    }

    /// A v5 token for the user with `uniquifier`, as Flask-Security's
    /// `get_auth_token` makes it (no expiry of its own: the max age applies).
    /// `now` is Unix time with fractions (the `fs_paa` claim).
    pub fn issue(&self, uniquifier: &str, now: f64) -> String {
        let json = serde_json::to_vec(&PayloadV5 {
            ver: "5",
            uid: uniquifier,
            fs_paa: now,
            exp: 0,
        })
        .unwrap_or_default();
        // itsdangerous compresses when that saves more than one byte.
        let mut compressed = Vec::new();
        let _ = flate2::read::ZlibEncoder::new(json.as_slice(), flate2::Compression::default())
            .read_to_end(&mut compressed);
        let mut value = if !compressed.is_empty() && compressed.len() + 1 < json.len() {
            format!(".{}", URL_SAFE_NO_PAD.encode(compressed))
        } else {
            URL_SAFE_NO_PAD.encode(json)
        };
        let timestamp = now.floor();
        let timestamp = if timestamp > 0.0 && timestamp < 9.0e15 {
            timestamp as u64
        } else {
            0
        };
        value.push('.');
        value.push_str(&URL_SAFE_NO_PAD.encode(stripped_be(timestamp)));
        let signature = self
            .keys
            .first()
            .map(|key| URL_SAFE_NO_PAD.encode(hmac::sign(key, value.as_bytes()).as_ref()))
            .unwrap_or_default();
        value.push('.');
        value.push_str(&signature);
        value
    }

    /// Verifies the signature (every key, constant time each), the age against `now`
    /// (Unix seconds), a v5 `exp`, and reads the payload.
    pub fn decode(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LENGTH {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (payload, timestamp) = signed.rsplit_once('.').ok_or(TokenError::Malformed)?;
        verify_signature(&self.keys, signed, signature)?;
        let issued_at =
            i64::try_from(decode_timestamp(timestamp)?).map_err(|_| TokenError::Malformed)?;
        if issued_at > now.saturating_add(self.clock_skew) {
            return Err(TokenError::FromTheFuture);
        }
        if now.saturating_sub(issued_at) > self.max_age {
            return Err(TokenError::Expired);
        }
        let json = payload_bytes(payload)?;
        let value: serde_json::Value =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        let claims = |uniquifier: &serde_json::Value, user_id: Option<i64>| {
            let uniquifier = uniquifier.as_str().filter(|u| !u.is_empty());
            uniquifier
                .map(|uniquifier| Claims {
                    uniquifier: uniquifier.to_owned(),
                    user_id,
                    issued_at,
                })
                .ok_or(TokenError::Malformed)
        };
        match &value {
            serde_json::Value::Object(map) => {
                let exp = map
                    .get("exp")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0);
                if exp > 0 && now > exp {
                    return Err(TokenError::Expired);
                }
                claims(map.get("uid").unwrap_or(&serde_json::Value::Null), None)
            }
            serde_json::Value::Array(items) => match items.as_slice() {
                [uniquifier] => claims(uniquifier, None),
                [id, _hash, uniquifier] => {
                    let id = id
                        .as_i64()
                        .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
                        .ok_or(TokenError::Malformed)?;
                    claims(uniquifier, Some(id))
                }
                _ => Err(TokenError::Malformed),
            },
            _ => Err(TokenError::Malformed),
        }
    }
}

/// The JSON of a payload: base64, or `.` + base64 of zlib data.
fn payload_bytes(payload: &str) -> Result<Vec<u8>, TokenError> {
    let (compressed, encoded) = match payload.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, payload),
    };
    let decoded = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed)?;
    if !compressed {
        return Ok(decoded);
    }
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(decoded.as_slice())
        .take(MAX_PAYLOAD + 1)
        .read_to_end(&mut json)
        .map_err(|_| TokenError::Malformed)?;
    if json.len() as u64 > MAX_PAYLOAD {
        return Err(TokenError::Malformed);
    }
    Ok(json)
}

/// Flask-Security's `get_hmac`: `base64(HMAC-SHA512(key = salt, msg = password))`.
pub fn password_hmac(password: &str, salt: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA512, salt);
    STANDARD.encode(hmac::sign(&key, password.as_bytes()).as_ref())
}

/// What a stored FlexMeasures password hash said about a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Matches,
    DoesNotMatch,
    /// Not bcrypt or argon2: refused, never compared.
    UnknownFormat,
}

/// Checks `password` against a hash from `fm_user.password`. Slow by design (bcrypt
/// or argon2); run it on the blocking pool.
pub fn verify_password(password: &Secret<String>, stored: &str, salt: &[u8]) -> PasswordCheck {
    let prehashed = password_hmac(password.expose(), salt);
    let verdict = |ok: bool| {
        if ok {
            PasswordCheck::Matches
        } else {
            PasswordCheck::DoesNotMatch
        }
    };
    if ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| stored.starts_with(p))
    {
        // passlib truncates at 72 bytes, as bcrypt itself would.
        let candidate = prehashed.get(..72).unwrap_or(&prehashed);
        return verdict(bcrypt::verify(candidate, stored).unwrap_or(false));
    }
    if stored.starts_with("$argon2") {
        use argon2::PasswordVerifier as _;
        let Ok(parsed) = argon2::PasswordHash::new(stored) else {
            return PasswordCheck::UnknownFormat;
        };
        return verdict(
            argon2::Argon2::default()
                .verify_password(prehashed.as_bytes(), &parsed)
                .is_ok(),
        );
    }
    PasswordCheck::UnknownFormat
}

#[cfg(test)]
mod tests {
    use super::*;

    // DESIGN §3 vectors, computed with itsdangerous 2.2.0.
    const V5: &str = "eyJ2ZXIiOiI1IiwidWlkIjoiMGM2ZjhiMmI2ZTBhNGYwZjljOGExZDJlM2Y0YTViNmMiLCJmc19wYWEiOjE3NTQ2NTAwMDAuMTIzNDU2LCJleHAiOjB9.aJXVkA.2CfE0QD0_5iPnEYs97BdlQeAloI";
    const V4: &str =
        "WyIwYzZmOGIyYjZlMGE0ZjBmOWM4YTFkMmUzZjRhNWI2YyJd.aJXVkA.H8KaY2m0Wq8z3JTGMKymd_yOE80";
    const UID: &str = "0c6f8b2b6e0a4f0f9c8a1d2e3f4a5b6c";
    const ISSUED: i64 = 1_754_650_000;

    fn keys(secrets: &[&str]) -> FlaskSecurityKeys {
        let secrets: Vec<Secret<Vec<u8>>> = secrets
            .iter()
            .map(|s| Secret::new(s.as_bytes().to_vec()))
            .collect();
        FlaskSecurityKeys::new(
            &secrets,
            DEFAULT_SALT,
            Duration::from_secs(21_600),
            Duration::from_secs(30),
        )
        .expect("keys")
    }

    #[test]
    fn the_design_vectors_verify() {
        let keys = keys(&["notsecret"]);
        for token in [V5, V4] {
            let claims = keys.decode(token, ISSUED + 60).expect("valid");
            assert_eq!(claims.uniquifier, UID);
            assert_eq!(claims.issued_at, ISSUED);
            assert_eq!(claims.user_id, None);
        }
    }

    #[test]
    fn a_wrong_key_a_tampered_part_or_age_refuses() {
        assert_eq!(
            keys(&["other"]).decode(V5, ISSUED).unwrap_err(),
            TokenError::BadSignature
        );
        // A fallback key verifies.
        assert!(keys(&["other", "notsecret"]).decode(V5, ISSUED).is_ok());
        let keys = keys(&["notsecret"]);
        let tampered = V4.replacen("WyIw", "WyIx", 1);
        assert_eq!(
            keys.decode(&tampered, ISSUED),
            Err(TokenError::BadSignature)
        );
        assert_eq!(keys.decode(V5, ISSUED + 21_601), Err(TokenError::Expired));
        assert!(
            keys.decode(V5, ISSUED + 21_600).is_ok(),
            "exactly max age holds"
        );
        assert_eq!(keys.decode(V5, ISSUED - 31), Err(TokenError::FromTheFuture));
        for junk in ["", "a.b", "...", "x.y.z", &"a".repeat(MAX_TOKEN_LENGTH + 1)] {
            assert!(keys.decode(junk, ISSUED).is_err(), "{junk}");
        }
    }

    #[test]
    fn issued_tokens_round_trip_and_expire_by_exp() {
        let keys = keys(&["notsecret", "old"]);
        let token = keys.issue(UID, ISSUED as f64 + 0.25);
        let claims = keys.decode(&token, ISSUED).expect("valid");
        assert_eq!(claims.uniquifier, UID);
        assert_eq!(claims.issued_at, ISSUED);
        // Same shape as Flask-Security's: the payload decodes to the v5 claims.
        let payload = token.split('.').next().expect("payload");
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
        assert_eq!(json["ver"], "5");
        assert_eq!(json["uid"], UID);
        assert_eq!(json["exp"], 0);
    }

    #[test]
    fn compressed_and_v3_payloads_are_read() {
        let keys = keys(&["notsecret"]);
        let sign = |value: String| {
            let key = derive(b"notsecret", DEFAULT_SALT.as_bytes());
            let tag = URL_SAFE_NO_PAD.encode(hmac::sign(&key, value.as_bytes()).as_ref());
            format!("{value}.{tag}")
        };
        let timestamp = URL_SAFE_NO_PAD.encode(stripped_be(ISSUED as u64));
        let v3 = format!(r#"["42","d41d8cd98f00b204e9800998ecf8427e","{UID}"]"#);
        let token = sign(format!("{}.{timestamp}", URL_SAFE_NO_PAD.encode(&v3)));
        let claims = keys.decode(&token, ISSUED).expect("v3");
        assert_eq!(claims.user_id, Some(42));
        let mut zipped = Vec::new();
        flate2::read::ZlibEncoder::new(v3.as_bytes(), flate2::Compression::default())
            .read_to_end(&mut zipped)
            .expect("zlib");
        let token = sign(format!(".{}.{timestamp}", URL_SAFE_NO_PAD.encode(&zipped)));
        assert_eq!(keys.decode(&token, ISSUED).expect("zlib").uniquifier, UID);
        let expired = format!(
            r#"{{"ver":"5","uid":"{UID}","fs_paa":1.0,"exp":{}}}"#,
            ISSUED + 10
        );
        let token = sign(format!("{}.{timestamp}", URL_SAFE_NO_PAD.encode(&expired)));
        assert!(keys.decode(&token, ISSUED + 5).is_ok());
        assert_eq!(keys.decode(&token, ISSUED + 11), Err(TokenError::Expired));
    }

    #[test]
    fn the_password_hmac_matches_flask_security() {
        assert_eq!(
            password_hmac("testtest", b"notsecret"),
            "bwsqwXiiiaot5RiRznlv3tm0QpLd4jJ5LuwHRiQ62585LXkh4aimp/QrvvOjJGYTtk7w8SdqRkKhZfG14YdRiQ=="
        );
    }

    #[test]
    fn bcrypt_hashes_of_the_prehash_verify_and_unknown_formats_never_do() {
        let prehashed = password_hmac("testtest", b"salt");
        let stored = bcrypt::hash(&prehashed[..72], 4).expect("hash");
        let password = |p: &str| Secret::new(p.to_owned());
        assert_eq!(
            verify_password(&password("testtest"), &stored, b"salt"),
            PasswordCheck::Matches
        );
        assert_eq!(
            verify_password(&password("testtesu"), &stored, b"salt"),
            PasswordCheck::DoesNotMatch
        );
        assert_eq!(
            verify_password(&password("testtest"), &stored, b"other salt"),
            PasswordCheck::DoesNotMatch
        );
        use argon2::PasswordHasher as _;
        let salt =
            argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let argon = argon2::Argon2::default()
            .hash_password(prehashed.as_bytes(), &salt)
            .expect("argon2")
            .to_string();
        assert_eq!(
            verify_password(&password("testtest"), &argon, b"salt"),
            PasswordCheck::Matches
        );
        assert_eq!(
            verify_password(&password("testtesu"), &argon, b"salt"),
            PasswordCheck::DoesNotMatch
        );
        // SECURITY: a stored plain text equal to the password is not a match.
        assert_eq!(
            verify_password(&password("testtest"), "testtest", b"salt"),
            PasswordCheck::UnknownFormat
        );
        assert_eq!(
            verify_password(&password("x"), "$pbkdf2-sha512$25000$abc$def", b"salt"),
            PasswordCheck::UnknownFormat
        );
    }
}
