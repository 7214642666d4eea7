//! TLS termination: certificates are validated here before pingora sees them.
//!
//! pingora panics on a PEM it cannot load, so the gateway never hands it file paths.
//! [`CertificatePair::read`] parses and checks the chain and key (key matches the leaf,
//! validity dates), and pingora gets a [`CertificateStore`]: a certificate resolver
//! whose current pair can be swapped atomically, without dropping connections.
//! [`CertificateReloader`] watches the files and swaps in a renewed pair once it
//! passes the same checks; a pair that fails them is logged and the current one kept.
//! Listeners accept TLS 1.2 and 1.3 only (pingora's rustls default), with ALPN h2 and
//! http/1.1.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::utils::tls::{WrappedX509, parse_x509};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{Config, Problem};

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("`{path}` is not a valid PEM certificate file: {reason}")]
    BadCertificatePem { path: PathBuf, reason: String },
    #[error("`{path}` holds a certificate that cannot be parsed: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("`{0}` holds no PEM private key")]
    NoKey(PathBuf),
    #[error("`{path}` is not a usable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate expired at {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
}

impl TlsError {
    fn hint(&self) -> &'static str {
        match self {
            Self::Read { .. } => "check the path and that the gateway's user may read it",
            Self::NoCertificate(_)
            | Self::BadCertificatePem { .. }
            | Self::BadCertificate { .. } => {
                "the file must hold PEM `CERTIFICATE` blocks, the server certificate first"
            }
            Self::NoKey(_) | Self::BadKey { .. } => {
                "the file must hold one PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519)"
            }
            Self::KeyMismatch => "point `private_key` at the key this certificate was issued for",
            Self::Expired(_) => "renew the certificate",
            Self::NotYetValid(_) => "check the machine's clock or the certificate's validity dates",
        }
    }
}

/// A validated certificate chain with its private key.
#[derive(Debug, Clone)]
pub struct CertificatePair {
    pub key: Arc<CertifiedKey>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses the leaf is valid for.
    pub names: Vec<String>,
}

impl CertificatePair {
    /// Reads and checks a PEM chain and key; refuses a pair that is unusable now.
    pub fn read(certificate: &Path, private_key: &Path) -> Result<Self, TlsError> {
        let chain_pem = read(certificate)?;
        let key_pem = read(private_key)?;
        Self::from_pem(certificate, &chain_pem, private_key, &key_pem)
    }

    /// Checks PEM text; paths only name the sources in errors.
    pub fn from_pem(
        certificate: &Path,
        chain_pem: &[u8],
        private_key: &Path,
        key_pem: &[u8],
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::BadCertificatePem {
                path: certificate.to_path_buf(),
                reason: error.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate(certificate.to_path_buf()));
        };
        let (not_before, not_after, names) =
            leaf_facts(leaf).map_err(|reason| TlsError::BadCertificate {
                path: certificate.to_path_buf(),
                reason,
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
            rustls_pki_types::pem::Error::NoItemsFound => {
                TlsError::NoKey(private_key.to_path_buf())
            }
            other => TlsError::BadKey {
                path: private_key.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
                other => TlsError::BadKey {
                    path: private_key.to_path_buf(),
                    reason: other.to_string(),
                },
            })?;
        let now = OffsetDateTime::now_utc();
        if now > not_after {
            return Err(TlsError::Expired(format_time(not_after)));
        }
        if now < not_before {
            return Err(TlsError::NotYetValid(format_time(not_before)));
        }
        Ok(Self {
            key: Arc::new(certified),
            not_before,
            not_after,
            names,
        })
    }

    /// Time left until the certificate expires (zero once expired).
    pub fn remaining(&self) -> Duration {
        let left = self.not_after - OffsetDateTime::now_utc();
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn leaf_facts(
    leaf: &CertificateDer<'_>,
) -> Result<(OffsetDateTime, OffsetDateTime, Vec<String>), String> {
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let validity = parsed.validity();
    let names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
        names,
    ))
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

fn format_time(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Checks the certificate files a configuration names, as problems at their keys.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let tls = &config.tls;
    let span = config.spans.certificate.clone();
    match CertificatePair::read(&tls.certificate, &tls.private_key) {
        Ok(pair) => {
            let remaining = pair.remaining();
            if remaining < tls.expiry_warning {
                problems.push(
                    Problem::warning(format!(
                        "the certificate expires in {} (at {})",
                        humantime::format_duration(Duration::from_secs(remaining.as_secs())),
                        format_time(pair.not_after)
                    ))
                    .at_opt(span)
                    .help("renew it; the warning threshold is `[tls] expiry_warning`"),
                );
            }
        }
        Err(error) => {
            let at = match error {
                TlsError::NoKey(_) | TlsError::BadKey { .. } => config.spans.private_key.clone(),
                TlsError::Read { ref path, .. } if path == &tls.private_key => {
                    config.spans.private_key.clone()
                }
                _ => span,
            };
            problems.push(
                Problem::error(error.to_string())
                    .at_opt(at)
                    .help(error.hint()),
            );
        }
    }
    for backend in config.backends.values() {
        let Some(ca) = backend.tls.as_ref().and_then(|tls| tls.ca.as_ref()) else {
            continue;
        };
        if let Err(error) = backend_ca(ca) {
            let at: Option<Range<usize>> = config.spans.backend_ca.get(&backend.name).cloned();
            problems.push(
                Problem::error(format!("backend `{}`: {error}", backend.name))
                    .at_opt(at)
                    .help("`ca` must be a PEM file with the CA certificates that sign the backend's certificate"),
            );
        }
    }
    problems
}

/// Loads a backend's private CA bundle in the form pingora's connector takes.
pub fn backend_ca(path: &Path) -> Result<Arc<[WrappedX509]>, TlsError> {
    let pem = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadCertificatePem {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    let mut wrapped = Vec::with_capacity(certificates.len());
    for certificate in certificates {
        // pingora's `parse_x509` panics on bad DER: parse first.
        X509Certificate::from_der(certificate.as_ref()).map_err(|error| {
            TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: error.to_string(),
            }
        })?;
        wrapped.push(WrappedX509::new(certificate.as_ref().to_vec(), parse_x509));
    }
    Ok(wrapped.into())
}

/// The certificate the TLS listeners present; replaceable while serving.
#[derive(Debug)]
pub struct CertificateStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertificateStore {
    pub fn new(pair: &CertificatePair) -> Self {
        Self {
            current: ArcSwap::new(pair.key.clone()),
        }
    }

    /// Serves `pair` to every handshake from now on; open connections keep theirs.
    pub fn replace(&self, pair: &CertificatePair) {
        self.current.store(pair.key.clone());
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reloads the served certificate when its files change.
///
/// Polls the files' size and modification time (symlink swaps, as Kubernetes secrets
/// and certbot do them, count as changes). A changed pair is read and checked on the
/// blocking pool; only a pair that passes every check replaces the current one. A
/// half-written renewal (new certificate, old key) fails the key check, is logged, and
/// is retried when the next file changes.
pub struct CertificateReloader {
    store: Arc<CertificateStore>,
    certificate: PathBuf,
    private_key: PathBuf,
    interval: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    audit: Arc<crate::audit::Audit>,
}

/// What identifies a version of the two files.
type Fingerprint = Option<[(std::time::SystemTime, u64); 2]>;

impl CertificateReloader {
    pub fn new(
        store: Arc<CertificateStore>,
        certificate: PathBuf,
        private_key: PathBuf,
        interval: Duration,
        metrics: Arc<crate::metrics::Metrics>,
        audit: Arc<crate::audit::Audit>,
    ) -> Self {
        Self {
            store,
            certificate,
            private_key,
            interval,
            metrics,
            audit,
        }
    }

    fn fingerprint(certificate: &Path, private_key: &Path) -> Fingerprint {
        let stamp = |path: &Path| {
            let metadata = fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        };
        Some([stamp(certificate)?, stamp(private_key)?])
    }

    /// Reads the files off the event loop; `None` if the blocking pool failed.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(PathBuf, PathBuf) -> T + Send + 'static,
    ) -> Option<T> {
        let (certificate, private_key) = (self.certificate.clone(), self.private_key.clone());
        tokio::task::spawn_blocking(move || work(certificate, private_key))
            .await
            .ok()
    }
}

#[async_trait::async_trait]
impl BackgroundService for CertificateReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = self
            .blocking(|c, k| Self::fingerprint(&c, &k))
            .await
            .flatten();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => {}
            }
            let now = self
                .blocking(|c, k| Self::fingerprint(&c, &k))
                .await
                .flatten();
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            match self.blocking(|c, k| CertificatePair::read(&c, &k)).await {
                Some(Ok(pair)) => {
                    self.store.replace(&pair);
                    self.metrics
                        .certificate_reload(Some(pair.not_after.unix_timestamp()));
                    let detail = format!("expires {}", format_time(pair.not_after));
                    self.audit.security("certificate-reloaded", Some(&detail));
                    tracing::info!(
                        certificate = %self.certificate.display(),
                        expires = %format_time(pair.not_after),
                        "certificate reloaded"
                    );
                }
                Some(Err(error)) => {
                    self.metrics.certificate_reload(None);
                    self.audit
                        .security("certificate-reload-failed", Some(&error.to_string()));
                    tracing::error!(
                        certificate = %self.certificate.display(),
                        %error,
                        "certificate not reloaded; still serving the previous one"
                    );
                }
                None => {
                    self.metrics.certificate_reload(None);
                    tracing::error!("certificate reload failed on the blocking pool");
                }
            }
        }
    }
}

/// pingora listener settings that take their certificate from `store`.
pub fn listener_settings(store: Arc<CertificateStore>) -> Result<TlsSettings, TlsError> {
    // With a resolver set, pingora ignores (and never opens) the certificate paths.
    let mut settings = TlsSettings::intermediate("", "").map_err(|error| TlsError::BadKey {
        path: PathBuf::new(),
        reason: error.to_string(),
    })?;
    settings.set_cert_resolver(store);
    settings.enable_h2();
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_certs::DevCertificates;

    fn pair(certs: &DevCertificates) -> Result<CertificatePair, TlsError> {
        CertificatePair::from_pem(
            Path::new("cert.pem"),
            certs.chain_pem.as_bytes(),
            Path::new("key.pem"),
            certs.key_pem.as_bytes(),
        )
    }

    #[test]
    fn a_matching_pair_loads_with_its_names() {
        let certs = DevCertificates::generate().expect("certs");
        let loaded = pair(&certs).expect("valid pair");
        assert!(loaded.names.contains(&"localhost".to_owned()));
        assert!(loaded.names.contains(&"127.0.0.1".to_owned()));
        assert_eq!(loaded.key.cert.len(), 2);
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let one = DevCertificates::generate().expect("certs");
        let other = DevCertificates::generate().expect("certs");
        let mixed = DevCertificates {
            key_pem: other.key_pem,
            ..one
        };
        assert!(matches!(pair(&mixed), Err(TlsError::KeyMismatch)));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let certs = DevCertificates::generate().expect("certs");
        let no_cert = DevCertificates {
            chain_pem: "hello".into(),
            ..certs.clone()
        };
        assert!(matches!(pair(&no_cert), Err(TlsError::NoCertificate(_))));
        let broken = DevCertificates {
            chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            ..certs.clone()
        };
        assert!(matches!(
            pair(&broken),
            Err(TlsError::BadCertificate { .. })
        ));
        let no_key = DevCertificates {
            key_pem: certs.chain_pem.clone(),
            ..certs
        };
        assert!(matches!(pair(&no_key), Err(TlsError::NoKey(_))));
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let past = OffsetDateTime::now_utc() - time::Duration::days(10);
        let expired =
            DevCertificates::generate_valid(&["localhost"], past, Duration::from_secs(3600))
                .expect("certs");
        assert!(matches!(pair(&expired), Err(TlsError::Expired(_))));
        let future = OffsetDateTime::now_utc() + time::Duration::days(10);
        let early =
            DevCertificates::generate_valid(&["localhost"], future, Duration::from_secs(3600))
                .expect("certs");
        assert!(matches!(pair(&early), Err(TlsError::NotYetValid(_))));
    }
}
