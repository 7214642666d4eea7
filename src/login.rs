//! The web login for UI routes (DESIGN §4): the gateway's own pages, sessions and
//! second factors. A pingora-free module: `proxy` hands it a [`PageRequest`] and
//! writes the [`Answer`]; for routes that accept sessions it asks [`WebLogin::caller`].
//!
//! The flow, every step a plain HTML form protected against CSRF:
//!
//! ```text
//! GET  /login?next=/ui          form (email, password)
//! POST /login                   login limits + lockouts → password → session (stage: password)
//!                               → code mailed, or the authenticator app asked for
//! GET  /login/verify            form (code)
//! POST /login/verify            second-factor limit → emailed code | TOTP | recovery code
//!                               → new session id (stage: complete) → 303 to `next`
//! GET  /login/totp              QR code of a new TOTP secret (complete sessions only)
//! POST /login/totp              a code from the app confirms it → recovery codes, shown once
//! GET  /logout, POST /logout    ends the session
//! ```
//!
//! A session is good while it is within its idle and absolute timeouts, its user is
//! active, the password is the one it began with, and it began after the user's
//! `sessions_not_before` (`portcullis session revoke`, password change, deactivation).

mod guard;
pub mod keys;
pub mod mail;
pub mod pages;
pub mod session;
pub mod totp;

use std::net::IpAddr;
use std::sync::Arc;

pub use guard::{LoginGuard, LoginLimits};

use crate::audit::Audit;
use crate::config::WebLoginSettings;
use crate::directory::UserId;
use crate::identity::{
    Authenticator, Identity, IdentityError, LoginAttempt, LoginError, SessionHolder,
};
use crate::metrics::Metrics;
use crate::rate_limit::{LimitClass, Subject};
use crate::rejection::Rejection;
use crate::secret::Secret;
use keys::{Keys, digest_hex, random_text};
use mail::{Delivered, Letter, Mailer};
use pages::{Message, Value};
use session::{Method, Pending, Session, SessionId, SessionStore, Stage};

/// The session cookie. `__Host-`: only set over HTTPS, for this host, with `Path=/`,
/// so neither a subdomain nor plain HTTP can plant one (RFC 6265bis §4.1.3.2).
pub const SESSION_COOKIE: &str = "__Host-portcullis-session";
/// The CSRF cookie whose HMAC every form carries.
pub const CSRF_COOKIE: &str = "__Host-portcullis-csrf";
/// The route id under which the pages are logged and audited.
pub const WEB_LOGIN_ROUTE: &str = "portcullis:web-login";

/// A session's last use is written at most this often (seconds).
const TOUCH_AFTER: i64 = 60;
/// A new emailed code no sooner than this after the last one (seconds).
const RESEND_AFTER: i64 = 30;
const RECOVERY_CODES: usize = 10;
const MAX_NEXT: usize = 2048;

pub struct WebLogin {
    settings: WebLoginSettings,
    keys: Keys,
    sessions: SessionStore,
    mailer: Mailer,
    authenticator: Arc<Authenticator>,
    guard: Arc<LoginGuard>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
}

/// A request for one of the pages, as the proxy read it.
pub struct PageRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub cookies: &'a Cookies,
    /// The decoded form of a POST (`application/x-www-form-urlencoded`).
    pub form: Form,
    /// Whether the browser said the request comes from this site (see [`same_origin`]).
    pub same_origin: bool,
    pub client_ip: IpAddr,
    pub request_id: &'a str,
}

/// What the proxy writes back: an HTML page or a redirect.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub html: String,
    /// The user the page was about, for the audit record.
    pub user: Option<UserId>,
    /// What happened, for the log and the audit record.
    pub note: &'static str,
}

/// A caller identified by a session cookie.
#[derive(Debug, Clone)]
pub struct SessionCaller {
    pub identity: Arc<Identity>,
    /// Whether the second factor was passed.
    pub complete: bool,
}

/// The pages under the login path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Login,
    Verify,
    Totp,
    Logout,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("web login needs the native directory")]
    NoDirectory,
    #[error("mail: {0}")]
    Mail(#[from] mail::MailError),
    #[error("redis: {0}")]
    Redis(#[from] crate::store::StoreError),
}

/// A session that passed every check, with its id and user.
struct Current {
    id: SessionId,
    session: Session,
    holder: SessionHolder,
}

impl WebLogin {
    pub fn start(
        config: &crate::config::Config,
        authenticator: Option<Arc<Authenticator>>,
        guard: Option<Arc<LoginGuard>>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> Result<Option<Self>, StartError> {
        let Some(settings) = &config.web_login else {
            return Ok(None);
        };
        let (Some(authenticator), Some(guard)) = (authenticator, guard) else {
            return Err(StartError::NoDirectory);
        };
        if authenticator.native().is_none() {
            return Err(StartError::NoDirectory);
        }
        let sessions = match &config.redis {
            Some(redis) => SessionStore::Redis(crate::store::Cluster::open(
                redis.url.expose(),
                &redis.prefix,
                redis.timeout,
            )?),
            None => SessionStore::memory(settings.max_sessions, settings.idle_timeout),
        };
        if let crate::config::MailTransport::Outbox(dir) = &settings.mail.transport {
            tracing::warn!(outbox = %dir.display(), "second-factor mails are written to the outbox, not sent");
        }
        Ok(Some(Self {
            keys: Keys::derive(settings.secret.expose()),
            mailer: Mailer::new(&settings.mail)?,
            settings: settings.clone(),
            sessions,
            authenticator,
            guard,
            metrics,
            audit,
        }))
    }

    /// Whether `path` is one of the login pages (answered here, never routed).
    pub fn serves(&self, path: &str) -> bool {
        self.page(path).is_some() || self.below_login(path)
    }

    fn below_login(&self, path: &str) -> bool {
        path.strip_prefix(self.settings.path.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    fn page(&self, path: &str) -> Option<Page> {
        let login = self.settings.path.as_str();
        if path == login {
            return Some(Page::Login);
        }
        if path == self.settings.logout_path {
            return Some(Page::Logout);
        }
        match path.strip_prefix(login) {
            Some("/verify") => Some(Page::Verify),
            Some("/totp") if self.settings.totp => Some(Page::Totp),
            _ => None,
        }
    }

    fn verify_path(&self) -> String {
        format!("{}/verify", self.settings.path)
    }

    fn totp_path(&self) -> String {
        format!("{}/totp", self.settings.path)
    }

    /// Where a browser without a session is sent: the login page, back to `next`.
    pub fn sign_in_location(&self, next: &str) -> String {
        with_next(&self.settings.path, &safe_next(Some(next)))
    }

    /// Where a browser whose session lacks the second factor is sent.
    pub fn second_factor_location(&self, next: &str) -> String {
        with_next(&self.verify_path(), &safe_next(Some(next)))
    }

    /// The caller behind the session cookie, if there is a good session. A store that
    /// cannot answer is 503 (fail closed); a bad or expired session is no caller.
    pub async fn caller(&self, cookies: &Cookies) -> Result<Option<SessionCaller>, Rejection> {
        Ok(self.current(cookies).await?.map(|current| SessionCaller {
            identity: current.holder.identity.clone(),
            complete: current.session.stage == Stage::Complete,
        }))
    }

    async fn current(&self, cookies: &Cookies) -> Result<Option<Current>, Rejection> {
        let Some(id) = cookies.get(SESSION_COOKIE).and_then(SessionId::from_cookie) else {
            return Ok(None);
        };
        let unavailable = |cause: String| Rejection::CredentialsUnavailable { cause };
        let Some(mut session) = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| unavailable(e.to_string()))?
        else {
            return Ok(None);
        };
        let holder = match self.native_holder(session.user).await {
            Ok(holder) => holder,
            Err(IdentityError::Invalid(_)) => return Ok(None),
            Err(IdentityError::Unavailable(cause)) => return Err(unavailable(cause)),
        };
        let now = crate::directory::now();
        if !self.is_good(&session, &holder, now) {
            // Over: forget it everywhere (best effort; it is refused either way).
            let _ = self.sessions.remove(&id).await;
            return Ok(None);
        }
        if now - session.seen >= TOUCH_AFTER {
            session.seen = now;
            if let Err(error) = self.save(&id, &session).await {
                tracing::warn!(%error, "cannot record a session's use");
            }
        }
        Ok(Some(Current {
            id,
            session,
            holder,
        }))
    }

    async fn native_holder(&self, user: UserId) -> Result<SessionHolder, IdentityError> {
        match self.authenticator.native() {
            Some(native) => native.session_holder(user).await,
            None => Err(IdentityError::Unavailable("no native directory".into())),
        }
    }

    /// The user's authenticator app, from the directory.
    async fn enrollment(
        &self,
        user: UserId,
    ) -> Result<Option<crate::directory::TotpEnrollment>, crate::store::StoreError> {
        let native = self
            .authenticator
            .native()
            .ok_or_else(|| crate::store::StoreError::Unavailable("no native directory".into()))?;
        native
            .on_directory(move |d| async move { d.database().totp(user).await })
            .await
    }

    fn is_good(&self, session: &Session, holder: &SessionHolder, now: i64) -> bool {
        let fingerprint = data_encoding::HEXLOWER.encode(&holder.fingerprint);
        now.saturating_sub(session.created) <= seconds(self.settings.absolute_timeout)
            && now.saturating_sub(session.seen) <= seconds(self.settings.idle_timeout)
            && holder.active
            && session.created >= holder.sessions_not_before
            // SECURITY: a changed password ends the session.
            && crate::secret::constant_time_eq(fingerprint.as_bytes(), session.fingerprint.as_bytes())
    }

    async fn save(
        &self,
        id: &SessionId,
        session: &Session,
    ) -> Result<(), crate::store::StoreError> {
        self.sessions
            .save(id, session, self.settings.idle_timeout)
            .await
    }

    /// Answers a request for one of the pages.
    pub async fn answer(
        &self,
        request: PageRequest<'_>,
        limits: LoginLimits<'_>,
        second_factor: &[Arc<LimitClass>],
    ) -> Answer {
        let Some(page) = self.page(request.path) else {
            return self.notice(404, "Page not found", "There is no such page.", "not found");
        };
        let method = request.method;
        if method != http::Method::GET
            && method != http::Method::HEAD
            && method != http::Method::POST
        {
            let mut answer = self.notice(
                405,
                "Method not allowed",
                "Use the form on the page.",
                "method not allowed",
            );
            answer.headers.push(("allow", "GET, HEAD, POST".into()));
            return answer;
        }
        let csrf = Csrf::of(request.cookies);
        if method == http::Method::POST {
            let token = request.form.get("csrf").unwrap_or_default();
            // SECURITY: the form must carry the HMAC of the browser's CSRF cookie, and
            // the browser must not say the request came from another site.
            let genuine = request.same_origin
                && csrf
                    .existing
                    .as_deref()
                    .is_some_and(|cookie| self.keys.csrf_matches(cookie, token));
            if !genuine {
                let mut answer = self.notice(
                    403,
                    "Please try again",
                    "This form expired or came from another site. Go back, reload the page and try again.",
                    "csrf check failed",
                );
                csrf.set_cookie(&mut answer);
                return answer;
            }
        }
        let csrf_token = self.keys.csrf_token(&csrf.value);
        let query = Form::parse(request.query.unwrap_or_default().as_bytes());
        let context = Context {
            request: &request,
            csrf: &csrf_token,
            next: safe_next(request.form.get("next").or_else(|| query.get("next"))),
        };
        let current = match self.current(request.cookies).await {
            Ok(current) => current,
            Err(rejection) => {
                tracing::warn!(request_id = request.request_id, reason = %rejection, "web login cannot check sessions");
                return self.unavailable();
            }
        };
        let mut answer = match (page, method == http::Method::POST) {
            (Page::Login, false) => self.show_login(&context, current.as_ref()),
            (Page::Login, true) => self.log_in(&context, current, limits).await,
            (Page::Verify, false) => self.show_verify(&context, current, None, 200).await,
            (Page::Verify, true) => self.verify(&context, current, second_factor).await,
            (Page::Totp, false) => self.show_enroll(&context, current).await,
            (Page::Totp, true) => self.enroll(&context, current).await,
            (Page::Logout, false) => self.show_logout(&context, current.as_ref()),
            (Page::Logout, true) => self.log_out(&context, current).await,
        };
        csrf.set_cookie(&mut answer);
        answer
    }

    fn render(
        &self,
        status: u16,
        heading: &str,
        message: Message<'_>,
        content: &str,
        note: &'static str,
    ) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            html: pages::page(&self.settings.title, heading, message, content),
            user: None,
            note,
        }
    }

    fn notice(&self, status: u16, heading: &str, text: &str, note: &'static str) -> Answer {
        let content = pages::fill(
            pages::NOTICE,
            &[
                ("text", Value::Text(text)),
                ("link", Value::Text(&self.settings.path)),
                ("link_text", Value::Text("Go to the login page")),
            ],
        );
        self.render(status, heading, Message::None, &content, note)
    }

    fn unavailable(&self) -> Answer {
        let mut answer = self.notice(
            503,
            "Please try again shortly",
            "Logging in is not possible right now. Please try again in a minute.",
            "stores unavailable",
        );
        answer.headers.push(("retry-after", "5".into()));
        answer
    }

    fn redirect(&self, location: String, note: &'static str) -> Answer {
        Answer {
            status: 303,
            headers: vec![("location", location)],
            html: String::new(),
            user: None,
            note,
        }
    }

    fn login_form(
        &self,
        context: &Context<'_>,
        status: u16,
        message: Message<'_>,
        email: &str,
        note: &'static str,
    ) -> Answer {
        let content = pages::fill(
            pages::LOGIN,
            &[
                ("action", Value::Text(&self.settings.path)),
                ("csrf", Value::Text(context.csrf)),
                ("next", Value::Text(&context.next)),
                ("email", Value::Text(email)),
            ],
        );
        self.render(status, "Log in", message, &content, note)
    }

    fn show_login(&self, context: &Context<'_>, current: Option<&Current>) -> Answer {
        if current.is_some_and(|c| c.session.stage == Stage::Complete) {
            return self.redirect(context.next.clone(), "already logged in");
        }
        self.login_form(context, 200, Message::None, "", "login page")
    }

    /// `POST /login`: limits and lockouts, the password, then a new session that
    /// waits for its second factor.
    async fn log_in(
        &self,
        context: &Context<'_>,
        current: Option<Current>,
        limits: LoginLimits<'_>,
    ) -> Answer {
        let form = &context.request.form;
        let email = form.get("email").unwrap_or_default().trim().to_owned();
        let password = form.get("password").unwrap_or_default().to_owned();
        let login = (!email.is_empty()).then_some(email.as_str());
        let subject = Subject {
            ip: context.request.client_ip,
            user: None,
            account: None,
            route: WEB_LOGIN_ROUTE,
            login,
        };
        if let Err(rejection) = self.guard.admit(limits, &subject).await {
            return self.refused_login(context, &rejection, &email);
        }
        if email.is_empty() || password.is_empty() {
            return self.login_form(
                context,
                400,
                Message::Error("Enter your email and password."),
                &email,
                "incomplete login form",
            );
        }
        let Some(native) = self.authenticator.native() else {
            return self.unavailable();
        };
        let attempt = LoginAttempt {
            email: email.clone(),
            password: Secret::new(password),
        };
        let user = match native.check_password(attempt).await {
            Ok(user) => user,
            Err(LoginError::BadCredentials | LoginError::Malformed) => {
                self.metrics.login("refused");
                self.guard
                    .failed(limits, &subject, context.request.request_id)
                    .await;
                self.audit.security(
                    "web-login-failed",
                    Some("wrong email or password, or inactive user"),
                );
                return self.login_form(
                    context,
                    401,
                    Message::Error("Wrong email or password."),
                    &email,
                    "wrong email or password",
                );
            }
            Err(LoginError::Unavailable(cause)) => {
                self.metrics.login("unavailable");
                tracing::warn!(request_id = context.request.request_id, %cause, "web login cannot check passwords");
                return self.unavailable();
            }
        };
        self.metrics.login("session");
        // SECURITY: a new id at every step up (no session fixation).
        if let Some(old) = current {
            let _ = self.sessions.remove(&old.id).await;
        }
        let now = crate::directory::now();
        let fingerprint =
            data_encoding::HEXLOWER.encode(&crate::identity::native::password_fingerprint(&user));
        let mut session = Session {
            user: user.id,
            // Revocations date themselves a second ahead; a session begun in that
            // second must still count as after them.
            created: now.max(user.sessions_not_before),
            seen: now,
            stage: Stage::Password,
            fingerprint,
            pending: None,
            enrolling: None,
            salt: random_text(16),
        };
        let enrolled = match self.enrollment(user.id).await {
            Ok(enrolled) => enrolled.is_some(),
            Err(error) => {
                tracing::warn!(request_id = context.request.request_id, %error, "web login cannot read second factors");
                return self.unavailable();
            }
        };
        if enrolled {
            session.pending = Some(Pending {
                method: Method::Totp,
                code_hash: None,
                expires: now + seconds(self.settings.code_lifetime),
                attempts: 0,
                sent_at: now,
            });
        } else if let Err(answer) = self.mail_code(context, &mut session, &user.email).await {
            return answer;
        }
        let id = SessionId::new();
        if let Err(error) = self.save(&id, &session).await {
            tracing::warn!(request_id = context.request.request_id, %error, "web login cannot store a session");
            return self.unavailable();
        }
        self.audit.security(
            "web-login-password",
            Some(&format!("user {} passed the password step", user.id)),
        );
        let mut answer = self.redirect(
            with_next(&self.verify_path(), &context.next),
            "password accepted",
        );
        answer.user = Some(user.id);
        answer.headers.push(("set-cookie", session_cookie(&id)));
        answer
    }

    fn refused_login(&self, context: &Context<'_>, rejection: &Rejection, email: &str) -> Answer {
        match rejection {
            Rejection::RateLimited(_) | Rejection::LockedOut { .. } => {
                let wait = retry_after(rejection);
                let text = too_many(wait);
                let mut answer = self.login_form(
                    context,
                    429,
                    Message::Error(&text),
                    email,
                    "login attempts limited",
                );
                answer.headers.push(("retry-after", wait.to_string()));
                answer
            }
            _ => {
                tracing::warn!(request_id = context.request.request_id, reason = %rejection, "web login refused");
                self.unavailable()
            }
        }
    }

    /// Mails a fresh code and records it as the session's pending second factor.
    async fn mail_code(
        &self,
        context: &Context<'_>,
        session: &mut Session,
        email: &str,
    ) -> Result<(), Answer> {
        let code = six_digits();
        let now = crate::directory::now();
        let minutes = self.settings.code_lifetime.as_secs().div_ceil(60);
        let letter = Letter {
            to: email,
            subject: &format!("Your {} login code", self.settings.title),
            text: format!(
                "Your login code is {code}\r\n\r\nIt is valid for {minutes} minutes and can be used once.\r\n\r\nIf you did not just try to log in, someone knows your password: change it.\r\n"
            ),
        };
        match self.mailer.send(letter).await {
            Ok(Delivered::File(path)) => {
                tracing::info!(request_id = context.request.request_id, outbox = %path.display(), "second-factor mail written to the outbox");
            }
            Ok(Delivered::Smtp) => {
                tracing::debug!(
                    request_id = context.request.request_id,
                    "second-factor mail sent"
                );
            }
            Err(error) => {
                tracing::error!(request_id = context.request.request_id, %error, "cannot send a second-factor mail");
                self.audit.security(
                    "second-factor-mail-failed",
                    Some(&format!("user {}", session.user)),
                );
                return Err(self.notice(
                    503,
                    "We could not send your code",
                    "The login code could not be sent. Please try again in a minute.",
                    "mail failed",
                ));
            }
        }
        session.pending = Some(Pending {
            method: Method::Email,
            code_hash: Some(digest_hex(&format!("{}:{code}", session.salt))),
            expires: now + seconds(self.settings.code_lifetime),
            attempts: 0,
            sent_at: now,
        });
        Ok(())
    }

    async fn show_verify(
        &self,
        context: &Context<'_>,
        current: Option<Current>,
        message: Option<(&str, bool)>,
        status: u16,
    ) -> Answer {
        let Some(current) = current else {
            return self.redirect(with_next(&self.settings.path, &context.next), "no session");
        };
        if current.session.stage == Stage::Complete {
            return self.redirect(context.next.clone(), "second factor already passed");
        }
        let action = self.verify_path();
        let (instructions, label, inputmode, extra) = match current.session.pending.as_ref().map(|p| p.method) {
            Some(Method::Totp) => (
                "Enter the 6-digit code from your authenticator app. Lost it? Enter one of your recovery codes instead.".to_owned(),
                "Code",
                "text",
                String::new(),
            ),
            method => {
                let email = &current.holder.identity.email;
                let text = if method.is_some() {
                    format!(
                        "We sent a 6-digit code to {}. It is valid for {} minutes.",
                        pages::masked_email(email),
                        self.settings.code_lifetime.as_secs().div_ceil(60)
                    )
                } else {
                    "Your code expired or was used up. Send yourself a new one.".to_owned()
                };
                let resend = pages::fill(
                    pages::RESEND,
                    &[
                        ("action", Value::Text(&action)),
                        ("csrf", Value::Text(context.csrf)),
                        ("next", Value::Text(&context.next)),
                    ],
                );
                (text, "Code from the email", "numeric", resend)
            }
        };
        let content = pages::fill(
            pages::VERIFY,
            &[
                ("instructions", Value::Text(&instructions)),
                ("action", Value::Text(&action)),
                ("csrf", Value::Text(context.csrf)),
                ("next", Value::Text(&context.next)),
                ("code_label", Value::Text(label)),
                ("inputmode", Value::Text(inputmode)),
                ("extra", Value::Markup(&extra)),
            ],
        );
        let message = match message {
            Some((text, true)) => Message::Error(text),
            Some((text, false)) => Message::Notice(text),
            None => Message::None,
        };
        let mut answer = self.render(
            status,
            "Check your second factor",
            message,
            &content,
            "second-factor page",
        );
        answer.user = Some(current.session.user);
        answer
    }

    /// `POST /login/verify`: a code (emailed, TOTP or recovery), or a request to
    /// mail a new one.
    async fn verify(
        &self,
        context: &Context<'_>,
        current: Option<Current>,
        limit: &[Arc<LimitClass>],
    ) -> Answer {
        let Some(mut current) = current else {
            return self.redirect(with_next(&self.settings.path, &context.next), "no session");
        };
        if current.session.stage == Stage::Complete {
            return self.redirect(context.next.clone(), "second factor already passed");
        }
        let user = current.session.user;
        let email = current.holder.identity.email.clone();
        let subject = Subject {
            ip: context.request.client_ip,
            user: Some(user),
            account: None,
            route: WEB_LOGIN_ROUTE,
            login: Some(&email),
        };
        // SECURITY: every code tried and every code mailed counts, per user and per address.
        if let Err(rejection) = self.guard.count(limit, &subject).await {
            let wait = retry_after(&rejection);
            if !matches!(rejection, Rejection::RateLimited(_)) {
                return self.unavailable();
            }
            let text = too_many(wait);
            let mut answer = self
                .show_verify(context, Some(current), Some((&text, true)), 429)
                .await;
            answer.headers.push(("retry-after", wait.to_string()));
            answer.note = "second-factor attempts limited";
            return answer;
        }
        let now = crate::directory::now();
        if context.request.form.get("action") == Some("resend") {
            let is_totp = current
                .session
                .pending
                .as_ref()
                .is_some_and(|p| p.method == Method::Totp);
            if is_totp {
                return self.show_verify(context, Some(current), None, 200).await;
            }
            if let Some(pending) = &current.session.pending
                && now - pending.sent_at < RESEND_AFTER
            {
                return self
                    .show_verify(
                        context,
                        Some(current),
                        Some(("A code was sent moments ago; check your inbox.", false)),
                        200,
                    )
                    .await;
            }
            if let Err(answer) = self.mail_code(context, &mut current.session, &email).await {
                return answer;
            }
            if self.save(&current.id, &current.session).await.is_err() {
                return self.unavailable();
            }
            return self
                .show_verify(
                    context,
                    Some(current),
                    Some(("We sent you a new code.", false)),
                    200,
                )
                .await;
        }
        let code = context
            .request
            .form
            .get("code")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let outcome = self.check_code(&mut current.session, &code, now).await;
        match outcome {
            Ok(Some(method)) => self.complete(context, current, method).await,
            Ok(None) => {
                self.metrics.second_factor("refused");
                self.audit
                    .security("second-factor-failed", Some(&format!("user {user}")));
                if self.save(&current.id, &current.session).await.is_err() {
                    return self.unavailable();
                }
                let text = if current.session.pending.is_none() {
                    "Too many wrong codes. Send yourself a new one."
                } else {
                    "That code is wrong or has expired."
                };
                let mut answer = self
                    .show_verify(context, Some(current), Some((text, true)), 401)
                    .await;
                answer.note = "wrong second-factor code";
                answer
            }
            Err(error) => {
                tracing::warn!(request_id = context.request.request_id, %error, "web login cannot check a second factor");
                self.unavailable()
            }
        }
    }

    /// Checks a submitted code against what the session waits for. `Some(method)`:
    /// passed, and used up.
    async fn check_code(
        &self,
        session: &mut Session,
        code: &str,
        now: i64,
    ) -> Result<Option<&'static str>, crate::store::StoreError> {
        let Some(pending) = session.pending.as_mut() else {
            return Ok(None);
        };
        match pending.method {
            Method::Email => {
                Ok(
                    check_emailed_code(session, code, now, self.settings.code_attempts)
                        .then_some("email code"),
                )
            }
            Method::Totp => {
                let user = session.user;
                let Some(native) = self.authenticator.native() else {
                    return Ok(None);
                };
                if let Some(recovery) = recovery_code(code) {
                    let hash = digest_hex(&recovery);
                    let used = native
                        .on_directory(move |d| async move {
                            d.database().use_recovery_code(user, &hash, now).await
                        })
                        .await?;
                    return Ok(used.then_some("recovery code"));
                }
                let Some(enrollment) = self.enrollment(user).await? else {
                    return Ok(None);
                };
                let Ok(secret) = self
                    .keys
                    .open(&enrollment.sealed_secret, &totp_context(user))
                else {
                    tracing::error!(
                        user,
                        "a TOTP secret does not open with `[web_login] secret`; was the secret changed?"
                    );
                    return Ok(None);
                };
                let Some(step) = totp::verify(&secret, code, now, enrollment.last_step) else {
                    return Ok(None);
                };
                // SECURITY: the step is used up atomically; a replay (here or on
                // another instance) finds it taken.
                let fresh = native
                    .on_directory(
                        move |d| async move { d.database().use_totp_step(user, step).await },
                    )
                    .await?;
                Ok(fresh.then_some("authenticator app"))
            }
        }
    }

    /// The second factor passed: a new session id with the complete stage.
    async fn complete(
        &self,
        context: &Context<'_>,
        current: Current,
        method: &'static str,
    ) -> Answer {
        let mut session = current.session;
        session.stage = Stage::Complete;
        session.pending = None;
        session.seen = crate::directory::now();
        let id = SessionId::new();
        if self.save(&id, &session).await.is_err() {
            return self.unavailable();
        }
        let _ = self.sessions.remove(&current.id).await;
        self.metrics.second_factor("passed");
        self.audit.security(
            "second-factor-passed",
            Some(&format!("user {} by {method}", session.user)),
        );
        let mut answer = self.redirect(context.next.clone(), "logged in");
        answer.user = Some(session.user);
        answer.headers.push(("set-cookie", session_cookie(&id)));
        answer
    }

    /// `GET /login/totp`: a new secret to scan (complete sessions only).
    async fn show_enroll(&self, context: &Context<'_>, current: Option<Current>) -> Answer {
        let Some(mut current) = current.filter(|c| c.session.stage == Stage::Complete) else {
            return self.redirect(
                with_next(&self.settings.path, &self.totp_path()),
                "log in to enroll",
            );
        };
        let secret = totp::new_secret();
        let user = current.session.user;
        current.session.enrolling = Some(self.keys.seal(&secret, &enroll_context(user)));
        if self.save(&current.id, &current.session).await.is_err() {
            return self.unavailable();
        }
        self.enroll_page(context, &current, &secret, 200, None)
            .await
    }

    async fn enroll_page(
        &self,
        context: &Context<'_>,
        current: &Current,
        secret: &[u8],
        status: u16,
        error: Option<&str>,
    ) -> Answer {
        let user = current.session.user;
        let enrolled = self.enrollment(user).await.ok().flatten();
        let status_text = match enrolled {
            Some(totp) => format!(
                "An authenticator app is set up since {}. Setting up a new one replaces it and its recovery codes.",
                day(totp.enrolled_at)
            ),
            None => "No authenticator app is set up yet. With one, you log in with its codes instead of emailed ones.".to_owned(),
        };
        let uri = totp::uri(&self.settings.title, &current.holder.identity.email, secret);
        let qr = totp::qr_svg(&uri).unwrap_or_default();
        let grouped = group(&totp::base32(secret));
        let action = self.totp_path();
        let content = pages::fill(
            pages::ENROLL,
            &[
                ("status", Value::Text(&status_text)),
                ("qr", Value::Markup(&qr)),
                ("secret", Value::Text(&grouped)),
                ("action", Value::Text(&action)),
                ("csrf", Value::Text(context.csrf)),
                ("next", Value::Text(&context.next)),
            ],
        );
        let message = error.map_or(Message::None, Message::Error);
        let mut answer = self.render(
            status,
            "Set up an authenticator app",
            message,
            &content,
            "totp enrollment page",
        );
        answer.user = Some(user);
        answer
    }

    /// `POST /login/totp`: a code from the app confirms the secret.
    async fn enroll(&self, context: &Context<'_>, current: Option<Current>) -> Answer {
        let Some(mut current) = current.filter(|c| c.session.stage == Stage::Complete) else {
            return self.redirect(
                with_next(&self.settings.path, &self.totp_path()),
                "log in to enroll",
            );
        };
        let user = current.session.user;
        let secret = current
            .session
            .enrolling
            .as_deref()
            .and_then(|sealed| self.keys.open(sealed, &enroll_context(user)).ok());
        let Some(secret) = secret else {
            return self.redirect(self.totp_path(), "no enrollment in progress");
        };
        let now = crate::directory::now();
        let code = context.request.form.get("code").unwrap_or_default();
        let Some(step) = totp::verify(&secret, code, now, 0) else {
            self.metrics.second_factor("refused");
            return self
                .enroll_page(
                    context,
                    &current,
                    &secret,
                    401,
                    Some(
                        "That code does not match. Check the app's clock and try the current code.",
                    ),
                )
                .await;
        };
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<String> = codes
            .iter()
            .filter_map(|c| recovery_code(c))
            .map(|c| digest_hex(&c))
            .collect();
        let sealed = self.keys.seal(&secret, &totp_context(user));
        let Some(native) = self.authenticator.native() else {
            return self.unavailable();
        };
        let stored = native
            .on_directory(move |d| async move {
                d.database()
                    .enroll_totp(user, &sealed, step, &hashes, now)
                    .await
            })
            .await;
        if let Err(error) = stored {
            tracing::warn!(request_id = context.request.request_id, %error, "cannot store a TOTP enrollment");
            return self.unavailable();
        }
        current.session.enrolling = None;
        if let Err(error) = self.save(&current.id, &current.session).await {
            tracing::warn!(%error, "cannot update a session after enrollment");
        }
        self.audit
            .security("totp-enrolled", Some(&format!("user {user}")));
        let items: String = codes
            .iter()
            .map(|code| format!("<li>{}</li>", pages::escape(code)))
            .collect();
        let content = pages::fill(
            pages::RECOVERY,
            &[
                ("codes", Value::Markup(&items)),
                ("next", Value::Text(&context.next)),
            ],
        );
        let mut answer = self.render(
            200,
            "Save your recovery codes",
            Message::None,
            &content,
            "totp enrolled",
        );
        answer.user = Some(user);
        answer
    }

    fn show_logout(&self, context: &Context<'_>, current: Option<&Current>) -> Answer {
        let Some(current) = current else {
            return self.notice(200, "Log out", "You are not logged in.", "logout page");
        };
        let text = format!("You are logged in as {}.", current.holder.identity.email);
        let content = pages::fill(
            pages::LOGOUT,
            &[
                ("text", Value::Text(&text)),
                ("action", Value::Text(&self.settings.logout_path)),
                ("csrf", Value::Text(context.csrf)),
            ],
        );
        self.render(200, "Log out", Message::None, &content, "logout page")
    }

    async fn log_out(&self, _context: &Context<'_>, current: Option<Current>) -> Answer {
        let user = current.as_ref().map(|c| c.session.user);
        if let Some(current) = &current
            && let Err(error) = self.sessions.remove(&current.id).await
        {
            tracing::warn!(%error, "cannot remove a session at logout");
            return self.unavailable();
        }
        if let Some(user) = user {
            self.audit.security("logout", Some(&format!("user {user}")));
        }
        let mut answer = self.notice(200, "Logged out", "You are logged out.", "logged out");
        answer.user = user;
        answer.headers.push((
            "set-cookie",
            format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"),
        ));
        answer
    }

    /// Sessions kept in memory, for the metric (`None` with Redis).
    pub fn sessions_in_memory(&self) -> Option<u64> {
        self.sessions.count()
    }
}

/// What every page handler needs of the request.
struct Context<'a> {
    request: &'a PageRequest<'a>,
    /// The form token for this browser's CSRF cookie.
    csrf: &'a str,
    /// Where to go after logging in (a same-site path).
    next: String,
}

/// The browser's CSRF cookie, or a new one to set.
struct Csrf {
    existing: Option<String>,
    value: String,
}

impl Csrf {
    fn of(cookies: &Cookies) -> Self {
        let existing = cookies
            .get(CSRF_COOKIE)
            .filter(|v| keys::is_random_text(v, 32))
            .map(str::to_owned);
        let value = existing.clone().unwrap_or_else(|| random_text(32));
        Self { existing, value }
    }

    fn set_cookie(&self, answer: &mut Answer) {
        if self.existing.is_none() {
            answer.headers.push((
                "set-cookie",
                format!(
                    "{CSRF_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict",
                    self.value
                ),
            ));
        }
    }
}

/// Checks an emailed code against the session's pending one. A right code within
/// its lifetime passes and is used up; a wrong one counts, and the code is dropped
/// after `max_attempts` wrong ones or once expired.
fn check_emailed_code(session: &mut Session, code: &str, now: i64, max_attempts: u32) -> bool {
    let Some(pending) = session.pending.as_mut() else {
        return false;
    };
    let Some(expected) = pending.code_hash.as_deref() else {
        return false;
    };
    let submitted = digest_hex(&format!("{}:{code}", session.salt));
    // SECURITY: constant time, and an expired code fails even when it matches.
    let matches = crate::secret::constant_time_eq(expected.as_bytes(), submitted.as_bytes());
    if matches && now <= pending.expires {
        session.pending = None;
        return true;
    }
    pending.attempts += 1;
    if pending.attempts >= max_attempts || now > pending.expires {
        session.pending = None;
    }
    false
}

fn session_cookie(id: &SessionId) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax",
        id.as_str()
    )
}

/// What the identity sealing contexts bind a TOTP secret to.
fn totp_context(user: UserId) -> String {
    format!("totp:user:{user}")
}

fn enroll_context(user: UserId) -> String {
    format!("enroll:user:{user}")
}

fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// What a browser over a login limit is told.
fn too_many(wait: u64) -> String {
    format!(
        "Too many attempts. Try again in {}.",
        humantime::format_duration(std::time::Duration::from_secs(wait))
    )
}

fn retry_after(rejection: &Rejection) -> u64 {
    match rejection {
        Rejection::RateLimited(exceeded) => {
            crate::rate_limit::local::whole_seconds(exceeded.retry_after)
        }
        Rejection::LockedOut { retry_after, .. } => *retry_after,
        _ => 1,
    }
}

/// A uniformly random 6-digit code (rejection sampling: no modulo bias).
fn six_digits() -> String {
    let random = ring::rand::SystemRandom::new();
    loop {
        let mut bytes = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&random, &mut bytes);
        let n = u32::from_be_bytes(bytes);
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// `ABCDE-FGH2K`: 50 random bits in base32 (A–Z, 2–7: no 0/1/8/9 to confuse with letters).
fn new_recovery_code() -> String {
    let mut random = [0u8; 7];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let text = data_encoding::BASE32_NOPAD.encode(&random);
    let chars: String = text.chars().take(10).collect();
    format!(
        "{}-{}",
        chars.get(..5).unwrap_or_default(),
        chars.get(5..).unwrap_or_default()
    )
}

/// A recovery code as typed (any case, with or without the dash or spaces), in
/// its stored form; `None` if it cannot be one.
fn recovery_code(input: &str) -> Option<String> {
    let normalized: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (normalized.len() == 10 && normalized.chars().all(|c| c.is_ascii_alphanumeric()))
        .then_some(normalized)
}

/// `JBSWY3DPEHPK3PXP` → `JBSW Y3DP EHPK 3PXP`, easier to type.
fn group(text: &str) -> String {
    text.as_bytes()
        .chunks(4)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn day(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

/// `next` as given, if it is a path on this site; `/` otherwise.
/// SECURITY: only `/path`, never `//host`, `/\host`, a scheme, or anything the
/// canonicalizer would refuse, so the redirect cannot leave the site.
pub fn safe_next(next: Option<&str>) -> String {
    let Some(next) = next else {
        return "/".to_owned();
    };
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let ok = next.len() <= MAX_NEXT
        && next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && !next.contains('#')
        && crate::canonical::canonicalize(next.as_bytes())
            .is_ok_and(|target| target.path() == path);
    if ok { next.to_owned() } else { "/".to_owned() }
}

/// `base?next=…` with `next` percent-encoded.
fn with_next(base: &str, next: &str) -> String {
    if next == "/" {
        return base.to_owned();
    }
    let mut out = format!("{base}?next=");
    for byte in next.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a request says it comes from this site: `Sec-Fetch-Site` (when sent)
/// is `same-origin` or `none` (typed or bookmarked), and `Origin` (when sent) is
/// `https://` + this host. Browsers send at least one of them with every POST.
pub fn same_origin(origin: Option<&str>, fetch_site: Option<&str>, host: Option<&str>) -> bool {
    if let Some(site) = fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match (origin, host) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .strip_prefix("https://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

/// The request's cookies (`Cookie` header values, RFC 6265 §5.4).
#[derive(Debug, Default)]
pub struct Cookies(Vec<(String, String)>);

impl Cookies {
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut pairs = Vec::new();
        for value in values {
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            for part in text.split(';') {
                if let Some((name, value)) = part.trim().split_once('=') {
                    pairs.push((
                        name.trim().to_owned(),
                        value.trim().trim_matches('"').to_owned(),
                    ));
                }
            }
        }
        Self(pairs)
    }

    /// The value of `name`; `None` when absent or sent more than once (ambiguous).
    pub fn get(&self, name: &str) -> Option<&str> {
        let mut found = self.0.iter().filter(|(n, _)| n == name);
        match (found.next(), found.next()) {
            (Some((_, value)), None) => Some(value),
            _ => None,
        }
    }
}

/// A decoded `application/x-www-form-urlencoded` body or query.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        let decode = |text: &[u8]| -> String {
            let mut out = Vec::with_capacity(text.len());
            let mut i = 0;
            while let Some(&byte) = text.get(i) {
                match byte {
                    b'+' => out.push(b' '),
                    b'%' => {
                        let hex = text
                            .get(i + 1..i + 3)
                            .and_then(|h| std::str::from_utf8(h).ok());
                        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            Some(decoded) => {
                                out.push(decoded);
                                i += 2;
                            }
                            None => out.push(b'%'),
                        }
                    }
                    other => out.push(other),
                }
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        let pairs = body
            .split(|&b| b == b'&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let mut split = part.splitn(2, |&b| b == b'=');
                let name = decode(split.next().unwrap_or_default());
                let value = decode(split.next().unwrap_or_default());
                (name, value)
            })
            .collect();
        Self(pairs)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_only_redirects_within_the_site() {
        for good in ["/", "/ui", "/ui/dashboard?tab=2", "/a-b/c_d.html"] {
            assert_eq!(safe_next(Some(good)), good, "{good}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "evil",
            "/ui/../admin",
            "/%2e%2e/admin",
            "/ui#x",
            "/ui\r\nSet-Cookie: x=1",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(MAX_NEXT)))), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn next_is_encoded_in_redirects() {
        assert_eq!(with_next("/login", "/"), "/login");
        assert_eq!(
            with_next("/login", "/ui?a=1&b=2"),
            "/login?next=/ui%3Fa%3D1%26b%3D2"
        );
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let host = Some("gw.example:8443");
        assert!(same_origin(None, None, host));
        assert!(same_origin(
            Some("https://gw.example:8443"),
            Some("same-origin"),
            host
        ));
        assert!(same_origin(None, Some("none"), host));
        assert!(!same_origin(Some("https://evil.example"), None, host));
        assert!(!same_origin(Some("http://gw.example:8443"), None, host));
        assert!(!same_origin(Some("null"), None, host));
        assert!(!same_origin(None, Some("cross-site"), host));
        assert!(!same_origin(None, Some("same-site"), host));
    }

    #[test]
    fn cookies_are_parsed_and_duplicates_are_ambiguous() {
        let cookies =
            Cookies::parse([b"a=1; b=\"2\"".as_slice(), b"c=3; a=4".as_slice()].into_iter());
        assert_eq!(cookies.get("b"), Some("2"));
        assert_eq!(cookies.get("c"), Some("3"));
        assert_eq!(cookies.get("a"), None, "sent twice");
        assert_eq!(cookies.get("d"), None);
    }

    #[test]
    fn forms_are_decoded() {
        let form = Form::parse(
            b"email=ann%40example.com&password=a+b%26c%3D&next=%2Fui&bad=%zz&email=second",
        );
        assert_eq!(form.get("email"), Some("ann@example.com"));
        assert_eq!(form.get("password"), Some("a b&c="));
        assert_eq!(form.get("next"), Some("/ui"));
        assert_eq!(form.get("bad"), Some("%zz"));
        assert_eq!(form.get("missing"), None);
    }

    fn waiting_for(code: &str, expires: i64) -> Session {
        let salt = "salt".to_owned();
        Session {
            user: 1,
            created: 0,
            seen: 0,
            stage: Stage::Password,
            fingerprint: String::new(),
            pending: Some(Pending {
                method: Method::Email,
                code_hash: Some(digest_hex(&format!("{salt}:{code}"))),
                expires,
                attempts: 0,
                sent_at: 0,
            }),
            enrolling: None,
            salt,
        }
    }

    #[test]
    fn an_emailed_code_passes_once_within_its_lifetime() {
        let mut session = waiting_for("123456", 300);
        assert!(check_emailed_code(&mut session, "123456", 300, 5));
        assert!(
            !check_emailed_code(&mut session, "123456", 300, 5),
            "replayed"
        );
        assert_eq!(session.pending, None);
    }

    #[test]
    fn an_expired_emailed_code_fails_and_is_dropped() {
        let mut session = waiting_for("123456", 300);
        assert!(!check_emailed_code(&mut session, "123456", 301, 5));
        assert_eq!(session.pending, None);
        assert!(!check_emailed_code(&mut session, "123456", 200, 5));
    }

    #[test]
    fn wrong_emailed_codes_use_the_code_up() {
        let mut session = waiting_for("123456", 300);
        for attempt in 1..=4 {
            assert!(!check_emailed_code(&mut session, "654321", 10, 5));
            assert_eq!(session.pending.as_ref().map(|p| p.attempts), Some(attempt));
        }
        assert!(!check_emailed_code(&mut session, "654321", 10, 5));
        assert_eq!(session.pending, None, "fifth wrong code");
        assert!(
            !check_emailed_code(&mut session, "123456", 10, 5),
            "even the right code now"
        );
    }

    #[test]
    fn codes_are_six_digits_and_recovery_codes_normalise() {
        for _ in 0..100 {
            let code = six_digits();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
        let code = new_recovery_code();
        assert_eq!(code.len(), 11);
        let stored = recovery_code(&code).expect("valid");
        assert_eq!(
            recovery_code(&code.to_lowercase().replace('-', " ")),
            Some(stored)
        );
        assert_eq!(recovery_code("123456"), None);
        assert_eq!(recovery_code("ABCDE-FGHI!"), None);
    }
}
