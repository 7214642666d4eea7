//! The `[flexmeasures]` section: what the gateway needs to verify what an existing
//! FlexMeasures server issued (its `SECRET_KEY`, fallbacks and password salt), who
//! answers `POST /api/requestAuthToken`, and what happens to tokens a client puts
//! where Flask-Security would read them besides `Authorization`.

use std::sync::Arc;

use toml::Spanned;

use super::diagnostic::Problem;
use super::{Check, raw};
use crate::secret::{Secret, SecretSource};

/// Who answers the login endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlexMeasuresLogin {
    /// The gateway checks the password and issues a FlexMeasures token itself.
    Gateway,
    /// The request goes to FlexMeasures (after the gateway's login limits).
    PassThrough,
}

/// What happens to `?auth_token=` and a JSON body's `auth_token`, which
/// Flask-Security prefers over `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInRequest {
    /// 400, nothing forwarded.
    Refuse,
    /// Removed before forwarding.
    Strip,
}

#[derive(Debug, Clone)]
pub struct FlexMeasuresSettings {
    /// `SECRET_KEY` first (it signs), then `SECRET_KEY_FALLBACKS` (they verify).
    pub secret_keys: Vec<Secret<Vec<u8>>>,
    /// `SECURITY_PASSWORD_SALT`, or `SECRET_KEY` when it is not set.
    pub password_salt: Secret<Vec<u8>>,
    /// `SECURITY_REMEMBER_SALT`, which signs auth tokens.
    pub token_salt: String,
    pub login: FlexMeasuresLogin,
    /// The backend that answers logins with `login = "pass-through"`.
    pub login_backend: Option<Spanned<String>>,
    pub auth_token_in_request: TokenInRequest,
    /// Largest JSON body looked into for `auth_token`; larger ones get 413.
    pub max_json_body: usize,
}

const DEFAULT_MAX_JSON_BODY: usize = 16 * 1024 * 1024;

impl Check<'_> {
    fn foreign_secret(&mut self, text: &Spanned<String>, key: &str) -> Option<Secret<Vec<u8>>> {
        let read = SecretSource::parse(text.get_ref(), &self.base).and_then(|s| s.read_foreign());
        match read {
            Ok(secret) => Some(secret),
            Err(error) => {
                self.error(
                    Problem::error(format!("`{key}`: {error}"))
                        .at(text.span())
                        .help("`env:NAME` (the value, as FlexMeasures' config has it) or `file:PATH` (e.g. FlexMeasures' instance/secret_key, read byte for byte)"),
                );
                None
            }
        }
    }

    pub(super) fn flexmeasures(
        &mut self,
        raw: raw::FlexMeasures,
        span: Option<std::ops::Range<usize>>,
    ) -> Option<FlexMeasuresSettings> {
        let Some(secret_key) = raw.secret_key.as_ref() else {
            self.error(
                Problem::error("`[flexmeasures]` needs `secret_key`, FlexMeasures' SECRET_KEY")
                    .at_opt(span)
                    .help("`secret_key = \"file:/srv/flexmeasures/instance/secret_key\"` or `\"env:FLEXMEASURES_SECRET_KEY\"`"),
            );
            return None;
        };
        let mut secret_keys: Vec<Secret<Vec<u8>>> = self
            .foreign_secret(secret_key, "secret_key")
            .into_iter()
            .collect();
        if let Some(list) = &raw.secret_key_fallbacks {
            for text in &list.get_ref().0 {
                let text = Spanned::new(list.span(), text.clone());
                secret_keys.extend(self.foreign_secret(&text, "secret_key_fallbacks"));
            }
        }
        let password_salt = match &raw.password_salt {
            Some(text) => self.foreign_secret(text, "password_salt"),
            None => secret_keys.first().cloned(),
        };
        let token_salt = raw.token_salt.map_or_else(
            || crate::token::flask_security::DEFAULT_SALT.to_owned(),
            Spanned::into_inner,
        );
        let login = self
            .keyword(
                raw.login.as_ref(),
                &[
                    ("gateway", FlexMeasuresLogin::Gateway),
                    ("pass-through", FlexMeasuresLogin::PassThrough),
                ],
                FlexMeasuresLogin::Gateway,
                "`login`",
                "`gateway`: the gateway checks passwords and issues FlexMeasures tokens; `pass-through`: FlexMeasures does",
            )
            .unwrap_or(FlexMeasuresLogin::Gateway);
        if login == FlexMeasuresLogin::PassThrough && raw.login_backend.is_none() {
            self.error(
                Problem::error("`login = \"pass-through\"` needs `login_backend`")
                    .at_opt(raw.login.as_ref().map(Spanned::span))
                    .help("name the [backends.NAME] that is FlexMeasures"),
            );
        }
        let auth_token_in_request = self
            .keyword(
                raw.auth_token_in_request.as_ref(),
                &[
                    ("refuse", TokenInRequest::Refuse),
                    ("strip", TokenInRequest::Strip),
                ],
                TokenInRequest::Refuse,
                "`auth_token_in_request`",
                "`refuse` (400) or `strip` (removed before forwarding)",
            )
            .unwrap_or(TokenInRequest::Refuse);
        let max_json_body = self.count(
            raw.max_json_body,
            DEFAULT_MAX_JSON_BODY,
            1 << 30,
            "max_json_body",
        );
        Some(FlexMeasuresSettings {
            password_salt: password_salt?,
            secret_keys,
            token_salt,
            login,
            login_backend: raw.login_backend,
            auth_token_in_request,
            max_json_body,
        })
        .filter(|settings| !settings.secret_keys.is_empty())
    }

    /// Cross-checks once backends are known.
    pub(super) fn flexmeasures_backend(
        &mut self,
        settings: &FlexMeasuresSettings,
        backends: &std::collections::BTreeMap<Arc<str>, super::Backend>,
    ) {
        if let Some(name) = &settings.login_backend
            && !backends.contains_key(name.get_ref().as_str())
        {
            let mut problem =
                Problem::error(format!("unknown backend `{}`", name.get_ref())).at(name.span());
            problem = match super::diagnostic::nearest(
                name.get_ref(),
                backends.keys().map(AsRef::as_ref),
            ) {
                Some(near) => problem.help(format!("did you mean `{near}`?")),
                None => problem.help("declare FlexMeasures as [backends.NAME]"),
            };
            self.error(problem);
        }
    }
}
