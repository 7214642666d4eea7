//! Development certificates: a private CA and a `localhost` certificate it signs.
//!
//! Used by `portcullis certs dev`, `portcullis demo` and the tests (which make fresh
//! ones per run). Never for production: the CA's key is thrown away, so nothing else
//! can ever be signed by it, but the CA itself must be trusted explicitly by clients.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// A CA certificate and a server certificate and key it signed, all PEM.
#[derive(Clone)]
pub struct DevCertificates {
    pub ca_pem: String,
    /// The server certificate followed by the CA: the full chain a server sends.
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for DevCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SECURITY: the private key is never printed.
        f.debug_struct("DevCertificates").finish_non_exhaustive()
    }
}

/// Where [`DevCertificates::write`] put the files.
#[derive(Debug, Clone)]
pub struct DevCertificatePaths {
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// The names a development certificate is valid for.
pub const LOCAL_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// How long a development certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

impl DevCertificates {
    /// 16 random bytes, positive and non-zero as RFC 5280 §4.1.2.2 requires (rcgen's
    /// own random serials may have the sign bit set).
    fn serial_number() -> rcgen::SerialNumber {
        let mut bytes = [0u8; 16];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        bytes[0] = (bytes[0] & 0x7f) | 0x01;
        rcgen::SerialNumber::from(bytes.to_vec())
    }

    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses),
    /// valid from `not_before` for `validity`.
    pub fn generate_valid(
        names: &[&str],
        not_before: OffsetDateTime,
        validity: Duration,
    ) -> Result<Self, rcgen::Error> {
        let not_after = not_before + validity;

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.distinguished_name = name("Portcullis development CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        ca_params.serial_number = Some(Self::serial_number());
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name = name(names.first().map_or("localhost", String::as_str));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(Self::serial_number());
        // RFC 5280 §4.2.1.1: strict path builders refuse a leaf without it.
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &ca)?;

        Ok(Self {
            ca_pem: ca.pem(),
            chain_pem: format!("{}{}", certificate.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
        })
    }

    /// A fresh CA and `localhost` certificate valid from now for [`VALIDITY`].
    pub fn generate() -> Result<Self, rcgen::Error> {
        // A little backdating absorbs clock differences between machines.
        let now = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        Self::generate_valid(LOCAL_NAMES, now, VALIDITY)
    }

    /// Writes `dev-ca.pem`, `localhost.pem` and `localhost-key.pem` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<DevCertificatePaths> {
        fs::create_dir_all(dir)?;
        let paths = DevCertificatePaths {
            ca: dir.join("dev-ca.pem"),
            certificate: dir.join("localhost.pem"),
            private_key: dir.join("localhost-key.pem"),
        };
        fs::write(&paths.ca, &self.ca_pem)?;
        fs::write(&paths.certificate, &self.chain_pem)?;
        write_private(&paths.private_key, &self.key_pem)?;
        Ok(paths)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Portcullis development");
    name
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_have_a_chain_and_a_private_key() {
        let certs = DevCertificates::generate().expect("generate");
        assert_eq!(certs.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(certs.key_pem.contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = certs.write(dir.path()).expect("write");
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(&paths.private_key)
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode, 0o600);
        assert!(format!("{certs:?}").find("PRIVATE").is_none());
    }
}
