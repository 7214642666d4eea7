//! Second-factor codes by mail: SMTP through lettre (STARTTLS, implicit TLS or a
//! plain local relay, with credentials from env or file), or, for development, one
//! file per mail in an outbox directory whose path is logged.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

use crate::config::{MailSettings, MailTransport, SmtpTls};

pub struct Mailer {
    from: Mailbox,
    transport: Transport,
    timeout: Duration,
}

enum Transport {
    Outbox(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid mail address: {0}")]
    Address(String),
    #[error("cannot build the mail: {0}")]
    Build(String),
    #[error("cannot write to the outbox: {0}")]
    Outbox(std::io::Error),
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
    #[error("SMTP delivery timed out")]
    Timeout,
}

/// Where a mail went, for the log (never its content).
#[derive(Debug)]
pub enum Delivered {
    File(PathBuf),
    Smtp,
}

/// A mail to send.
pub struct Letter<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: String,
}

impl Mailer {
    pub fn new(settings: &MailSettings) -> Result<Self, MailError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address(e.to_string()))?;
        let transport = match &settings.transport {
            MailTransport::Outbox(dir) => Transport::Outbox(dir.clone()),
            MailTransport::Smtp(smtp) => {
                let builder = match smtp.tls {
                    SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
                    SmtpTls::StartTls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                    }
                    SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                        &smtp.host,
                    )),
                }
                .map_err(|e| MailError::Smtp(e.to_string()))?;
                let mut builder = builder.port(smtp.port).timeout(Some(settings.timeout));
                if let Some((user, password)) = &smtp.credentials {
                    builder = builder
                        .credentials(Credentials::new(user.clone(), password.expose().clone()));
                }
                Transport::Smtp(builder.build())
            }
        };
        Ok(Self {
            from,
            transport,
            timeout: settings.timeout,
        })
    }

    pub async fn send(&self, letter: Letter<'_>) -> Result<Delivered, MailError> {
        let to: Mailbox = letter
            .to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address(e.to_string()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(letter.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(letter.text)
            .map_err(|e| MailError::Build(e.to_string()))?;
        match &self.transport {
            Transport::Outbox(dir) => {
                let path = dir.join(format!(
                    "{}-{}.eml",
                    crate::directory::now(),
                    uuid::Uuid::new_v4()
                ));
                let bytes = message.formatted();
                let write = async {
                    tokio::fs::create_dir_all(dir).await?;
                    write_private(&path, &bytes).await
                };
                tokio::time::timeout(self.timeout, write)
                    .await
                    .map_err(|_| MailError::Timeout)?
                    .map_err(MailError::Outbox)?;
                Ok(Delivered::File(path))
            }
            Transport::Smtp(transport) => {
                tokio::time::timeout(self.timeout, transport.send(message))
                    .await
                    .map_err(|_| MailError::Timeout)?
                    .map_err(|e| MailError::Smtp(e.to_string()))?;
                Ok(Delivered::Smtp)
            }
        }
    }
}

/// Outbox files hold live codes: readable by the gateway's user only.
async fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.write_all(bytes).await?;
    file.flush().await
}
