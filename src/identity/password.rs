//! Password hashes: bcrypt, with the cost from configuration (DESIGN §2).
//!
//! Passwords over 72 bytes are refused when set, never truncated. Verification runs
//! on the blocking pool; an unknown user is verified against a dummy hash of the same
//! cost so the answer takes as long as for a wrong password.

use crate::secret::Secret;

/// bcrypt reads at most 72 bytes; longer passwords would be silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MIN_PASSWORD_CHARS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "the password is {0} bytes long; bcrypt uses at most 72 bytes, so choose a shorter one (a passphrase of 6 to 8 words fits)"
    )]
    TooLong(usize),
    #[error("the password is shorter than 8 characters")]
    TooShort,
    #[error("cannot hash the password: {0}")]
    Hashing(String),
}

/// Hashes a new password; slow by design (run it off the event loop).
pub fn hash(password: &Secret<String>, cost: u32) -> Result<String, PasswordError> {
    let password = password.expose();
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong(password.len()));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    // `hash`, not `non_truncating_hash`: the crate counts bcrypt's NUL terminator, so
    // the latter refuses exactly 72 bytes, which bcrypt itself accepts. Longer input was
    // refused above, so nothing is truncated.
    bcrypt::hash(password, cost).map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// A hash no password matches, of the given cost, to spend the same time on unknown
/// users as on known ones.
pub fn dummy_hash(cost: u32) -> String {
    let mut random = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    bcrypt::hash(random, cost).unwrap_or_default()
}

/// Whether `password` matches `hash`. Passwords over 72 bytes never match (they could
/// not have been set); they still cost one bcrypt run against `dummy`.
pub fn verify(password: &Secret<String>, hash: Option<&str>, dummy: &str) -> bool {
    let password = password.expose();
    let too_long = password.len() > MAX_PASSWORD_BYTES;
    let (candidate, hash) = match hash {
        Some(hash) if !too_long => (password.as_bytes(), hash),
        _ => (
            password
                .as_bytes()
                .get(..MAX_PASSWORD_BYTES)
                .unwrap_or(password.as_bytes()),
            dummy,
        ),
    };
    let matched = bcrypt::verify(candidate, hash).unwrap_or(false);
    matched && hash != dummy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> Secret<String> {
        Secret::new(text.to_owned())
    }

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let dummy = dummy_hash(4);
        let hashed = hash(&secret("correct horse"), 4).expect("hash");
        assert!(hashed.starts_with("$2"));
        assert!(verify(&secret("correct horse"), Some(&hashed), &dummy));
        assert!(!verify(&secret("wrong horse"), Some(&hashed), &dummy));
        assert!(!verify(&secret("correct horse"), None, &dummy));
    }

    #[test]
    fn passwords_over_72_bytes_are_refused_not_truncated() {
        let long = "x".repeat(73);
        assert_eq!(hash(&secret(&long), 4), Err(PasswordError::TooLong(73)));
        // A 72-byte password's hash must not accept a longer one that shares its prefix.
        let exact = "y".repeat(72);
        let hashed = hash(&secret(&exact), 4).expect("72 bytes is fine");
        let dummy = dummy_hash(4);
        assert!(!verify(
            &secret(&format!("{exact}zzz")),
            Some(&hashed),
            &dummy
        ));
        assert!(verify(&secret(&exact), Some(&hashed), &dummy));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert_eq!(hash(&secret("short"), 4), Err(PasswordError::TooShort));
    }
}
