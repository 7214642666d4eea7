//! The only place that talks to PostgreSQL, SQLite and Redis (CONVENTIONS 1).
//!
//! [`Database`] is the native directory's storage: the same SQL text runs on a SQLite
//! file (the embedded default) or PostgreSQL, with one migration set per engine.
//! [`FlexMeasuresDatabase`] reads an existing FlexMeasures database.
//! [`Cluster`] is what instances share through Redis: not-before times and the change
//! notifications that make a revocation reach every instance within a second.

mod cluster;
mod database;
mod flexmeasures;

pub use cluster::{Cluster, GcraAnswer, GcraKey, Subscription};
pub use database::Database;
pub use flexmeasures::{FlexMeasuresDatabase, FlexMeasuresUser};

/// Why the store could not do what was asked. Never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The server could not be reached or answered with an error; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A unique value (account name, email) is already taken.
    #[error("already exists")]
    Conflict,
    /// The URL names no engine the gateway supports, or is malformed.
    #[error("{0}")]
    BadUrl(String),
}

/// Removes the password from a database or Redis URL before it is shown anywhere.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = url.get(scheme + 3..at).unwrap_or_default();
            let user = credentials.split(':').next().unwrap_or_default();
            let rest = url.get(at..).unwrap_or_default();
            let head = url.get(..scheme + 3).unwrap_or_default();
            if credentials.contains(':') {
                format!("{head}{user}:…{rest}")
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://gate:s3cret@db:5432/portcullis"),
            "postgres://gate:…@db:5432/portcullis"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1/0"),
            "redis://:…@127.0.0.1/0"
        );
        assert_eq!(redact_url("sqlite:portcullis.db"), "sqlite:portcullis.db");
    }
}
