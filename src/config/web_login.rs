//! The `[web_login]` and `[mail]` sections: the gateway's login pages for browsers,
//! their sessions and second factors, and how second-factor codes are mailed.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::diagnostic::Problem;
use super::{Check, raw};
use crate::secret::{Secret, SecretSource};

#[derive(Debug, Clone)]
pub struct WebLoginSettings {
    /// The login page; the second factor and TOTP enrollment live below it.
    pub path: String,
    pub logout_path: String,
    /// Keys the CSRF tokens and seals TOTP secrets at rest; shared by all instances.
    pub secret: Secret<Vec<u8>>,
    /// Shown on the pages and as the TOTP issuer.
    pub title: String,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    /// Sessions kept in memory (without Redis) at most.
    pub max_sessions: u64,
    pub code_lifetime: Duration,
    /// Wrong codes allowed per code sent; then a new one is needed.
    pub code_attempts: u32,
    /// Whether users may enroll an authenticator app.
    pub totp: bool,
    pub mail: MailSettings,
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `From:` of second-factor mails.
    pub from: String,
    pub transport: MailTransport,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    /// Each mail is written to a file here (development); the path is logged.
    Outbox(PathBuf),
    Smtp(SmtpSettings),
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, Secret<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    StartTls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

const DEFAULT_FROM: &str = "Portcullis <portcullis@localhost>";

impl Check<'_> {
    pub(super) fn web_login(
        &mut self,
        raw: raw::WebLogin,
        mail: Option<raw::Mail>,
        span: Option<std::ops::Range<usize>>,
    ) -> Option<WebLoginSettings> {
        let path = self.page_path(raw.path, "/login", "path");
        let logout_path = self.page_path(raw.logout_path, "/logout", "logout_path");
        if logout_path.starts_with(&format!("{path}/")) || logout_path == path {
            self.error(
                Problem::error(format!(
                    "`logout_path` `{logout_path}` is inside the login pages at `{path}`"
                ))
                .at_opt(span.clone())
                .help("use a path of its own, such as \"/logout\""),
            );
        }
        let secret = match &raw.secret {
            Some(text) => self.secret(text, "secret").map(|(_, secret)| secret),
            None => {
                self.error(
                    Problem::error("`[web_login]` needs `secret`: it keys CSRF tokens and seals TOTP secrets")
                        .at_opt(span)
                        .help("`secret = \"file:/etc/portcullis/web-login.key\"` with at least 32 random bytes, the same on every instance"),
                );
                None
            }
        };
        let idle_timeout = self.duration(
            raw.idle_timeout,
            Duration::from_secs(30 * 60),
            Duration::from_secs(60)..Duration::from_secs(31 * 24 * 3600),
            "idle_timeout",
        );
        let absolute_timeout = self.duration(
            raw.absolute_timeout,
            Duration::from_secs(12 * 3600),
            Duration::from_secs(60)..Duration::from_secs(366 * 24 * 3600),
            "absolute_timeout",
        );
        let max_sessions = self.count(raw.max_sessions, 100_000, 100_000_000, "max_sessions");
        let code_lifetime = self.duration(
            raw.code_lifetime,
            Duration::from_secs(5 * 60),
            Duration::from_secs(30)..Duration::from_secs(3601),
            "code_lifetime",
        );
        let code_attempts = self.count(raw.code_attempts, 5, 20, "code_attempts");
        let mail = self.mail(mail);
        Some(WebLoginSettings {
            path,
            logout_path,
            secret: secret?,
            title: raw
                .title
                .map_or_else(|| "Portcullis".to_owned(), Spanned::into_inner),
            idle_timeout,
            absolute_timeout,
            max_sessions: u64::try_from(max_sessions).unwrap_or(u64::MAX),
            code_lifetime,
            code_attempts: u32::try_from(code_attempts).unwrap_or(5),
            totp: raw.totp.unwrap_or(true),
            mail: mail?,
        })
    }

    fn page_path(&mut self, text: Option<Spanned<String>>, default: &str, key: &str) -> String {
        let Some(text) = text else {
            return default.to_owned();
        };
        let value = text.get_ref();
        let valid = value.starts_with('/')
            && value.len() > 1
            && !value.ends_with('/')
            && crate::canonical::canonicalize(value.as_bytes())
                .is_ok_and(|target| target.path() == value);
        if !valid {
            self.error(
                Problem::error(format!("`{key}` `{value}` is not a canonical path"))
                    .at(text.span())
                    .help(format!("write a path such as \"{default}\": a leading `/`, no trailing `/`, no `..`, no encoding")),
            );
            return default.to_owned();
        }
        value.clone()
    }

    fn mail(&mut self, raw: Option<raw::Mail>) -> Option<MailSettings> {
        let Some(raw) = raw else {
            let outbox = self.path("outbox");
            self.error(
                Problem::warning(format!(
                    "second-factor codes are written to files in `{}`, not mailed: there is no `[mail]` section",
                    outbox.display()
                ))
                .at(0..0)
                .help("add `[mail]` with `smtp_host` to send them, or `outbox = \"…\"` to keep files on purpose (development)"),
            );
            return Some(MailSettings {
                from: DEFAULT_FROM.to_owned(),
                transport: MailTransport::Outbox(outbox),
                timeout: Duration::from_secs(10),
            });
        };
        let from = match raw.from {
            None => DEFAULT_FROM.to_owned(),
            Some(text) => {
                if let Err(error) = text.get_ref().parse::<lettre::message::Mailbox>() {
                    self.error(
                        Problem::error(format!("`from` is not a mail address: {error}"))
                            .at(text.span())
                            .help("write `from = \"Portcullis <portcullis@example.com>\"`"),
                    );
                }
                text.into_inner()
            }
        };
        let timeout = self.duration(
            raw.timeout,
            Duration::from_secs(10),
            Duration::from_secs(1)..Duration::from_secs(301),
            "timeout",
        );
        let transport = match (raw.smtp_host, raw.outbox) {
            (Some(host), Some(outbox)) => {
                self.error(
                    Problem::error("`[mail]` has both `smtp_host` and `outbox`")
                        .at(outbox.span())
                        .help("mails go to one place: remove `outbox` to send them by SMTP"),
                );
                let _ = host;
                return None;
            }
            (None, Some(outbox)) => MailTransport::Outbox(self.path(outbox.get_ref())),
            (None, None) => MailTransport::Outbox(self.path("outbox")),
            (Some(host), None) => MailTransport::Smtp(self.smtp(
                host,
                raw.smtp_port,
                raw.smtp_tls,
                raw.smtp_username,
                raw.smtp_password,
            )?),
        };
        Some(MailSettings {
            from,
            transport,
            timeout,
        })
    }

    fn smtp(
        &mut self,
        host: Spanned<String>,
        port: Option<Spanned<i64>>,
        tls: Option<Spanned<String>>,
        username: Option<Spanned<String>>,
        password: Option<Spanned<String>>,
    ) -> Option<SmtpSettings> {
        let tls_mode = self.keyword(
            tls.as_ref(),
            &[
                ("starttls", SmtpTls::StartTls),
                ("tls", SmtpTls::Implicit),
                ("none", SmtpTls::None),
            ],
            SmtpTls::StartTls,
            "`smtp_tls`",
            "`starttls` (port 587), `tls` (port 465) or `none` (a local relay only)",
        )?;
        let default_port = match tls_mode {
            SmtpTls::Implicit => 465,
            SmtpTls::StartTls => 587,
            SmtpTls::None => 25,
        };
        let port = match port {
            None => default_port,
            Some(value) => match u16::try_from(*value.get_ref()) {
                Ok(port) if port > 0 => port,
                _ => {
                    self.error(
                        Problem::error("`smtp_port` must be from 1 to 65535").at(value.span()),
                    );
                    default_port
                }
            },
        };
        let credentials = match (username, password) {
            (None, None) => None,
            (Some(user), Some(text)) => {
                let read = SecretSource::parse(text.get_ref(), &self.base)
                    .and_then(|source| source.read_foreign());
                match read.map(|secret| String::from_utf8(secret.expose().clone())) {
                    Ok(Ok(password)) => Some((user.into_inner(), Secret::new(password))),
                    Ok(Err(_)) | Err(_) => {
                        self.error(
                            Problem::error("`smtp_password` cannot be read as UTF-8 text")
                                .at(text.span())
                                .help("`env:NAME` or `file:PATH` holding the SMTP password"),
                        );
                        return None;
                    }
                }
            }
            (Some(user), None) => {
                self.error(
                    Problem::error("`smtp_username` without `smtp_password`")
                        .at(user.span())
                        .help("add `smtp_password = \"env:SMTP_PASSWORD\"` (or `file:PATH`)"),
                );
                return None;
            }
            (None, Some(text)) => {
                self.error(
                    Problem::error("`smtp_password` without `smtp_username`").at(text.span()),
                );
                return None;
            }
        };
        Some(SmtpSettings {
            host: host.into_inner(),
            port,
            tls: tls_mode,
            credentials,
        })
    }
}
