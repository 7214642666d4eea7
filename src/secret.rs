//! Values that must never reach a log, an audit record or an error message.
//!
//! [`Secret`] hides its contents from `Debug` and `Display` (CONVENTIONS 10); code that
//! needs the value says so with [`Secret::expose`], which is easy to grep for.
//! [`SecretSource`] is how configuration names a secret without containing it.

use std::fmt;
use std::path::PathBuf;

/// A value whose `Debug` output is `Secret(…)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value itself; callers must not log or echo it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Secrets arrive in request bodies too (passwords); reading one keeps it wrapped.
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self)
    }
}

/// Where a secret comes from: `env:NAME` or `file:PATH`. Configuration never holds
/// secret bytes inline, so a config file can be shown, diffed and committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// Why a secret could not be read; never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("expected `env:NAME` or `file:PATH`")]
    Syntax,
    #[error("environment variable `{0}` is not set")]
    MissingEnv(String),
    #[error("cannot read `{path}`: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the secret from {0} is shorter than 32 bytes")]
    TooShort(String),
    #[error("the secret from {0} is empty")]
    Empty(String),
}

/// Secrets shorter than this are refused: HMAC keys need 256 bits of entropy.
pub const MIN_SECRET_BYTES: usize = 32;

impl SecretSource {
    /// Parses `env:NAME` or `file:PATH` (relative paths against `base`).
    pub fn parse(text: &str, base: &std::path::Path) -> Result<Self, SecretError> {
        if let Some(name) = text.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(Self::Env(name.to_owned()))
        } else if let Some(path) = text.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(Self::File(base.join(path)))
        } else {
            Err(SecretError::Syntax)
        }
    }

    /// Reads the secret: an environment variable's UTF-8 value, or a file's bytes with
    /// one trailing newline removed.
    pub fn read(&self) -> Result<Secret<Vec<u8>>, SecretError> {
        let bytes = self.read_bytes(true)?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(self.to_string()));
        }
        Ok(Secret::new(bytes))
    }

    /// Reads a secret another program chose (FlexMeasures' `SECRET_KEY`): a file's
    /// bytes exactly as stored, as that program reads them; any non-empty length.
    pub fn read_foreign(&self) -> Result<Secret<Vec<u8>>, SecretError> {
        let bytes = self.read_bytes(false)?;
        if bytes.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret::new(bytes))
    }

    fn read_bytes(&self, trim_newline: bool) -> Result<Vec<u8>, SecretError> {
        Ok(match self {
            Self::Env(name) => std::env::var(name)
                .map_err(|_| SecretError::MissingEnv(name.clone()))?
                .into_bytes(),
            Self::File(path) => {
                let mut bytes = std::fs::read(path).map_err(|e| SecretError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if trim_newline && bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                bytes
            }
        })
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths (which are
/// public here: digests, codes of a fixed size).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_value() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(…)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn sources_are_env_or_file_never_inline() {
        let base = std::path::Path::new("/etc/portcullis");
        assert_eq!(
            SecretSource::parse("env:TOKEN_SECRET", base),
            Ok(SecretSource::Env("TOKEN_SECRET".into()))
        );
        assert_eq!(
            SecretSource::parse("file:token.key", base),
            Ok(SecretSource::File(base.join("token.key")))
        );
        for inline in ["hunter2hunter2hunter2hunter2hunter2", "env:", "file:"] {
            assert_eq!(SecretSource::parse(inline, base), Err(SecretError::Syntax));
        }
    }

    #[test]
    fn file_secrets_lose_one_trailing_newline_and_must_be_long_enough() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "k".repeat(40))).expect("write");
        let secret = SecretSource::File(path.clone()).read().expect("read");
        assert_eq!(secret.expose().len(), 40);
        std::fs::write(&path, "short\n").expect("write");
        assert!(matches!(
            SecretSource::File(path).read(),
            Err(SecretError::TooShort(_))
        ));
    }
}
