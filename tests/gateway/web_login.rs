//! The web login over HTTPS: a cookie-keeping client walks the pages; second-factor
//! codes arrive by real SMTP at a receiver on loopback; TOTP codes are computed for
//! the current time step.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::support::{
    DEADLINE, EchoBackend, LoopbackServer, Ports, Reply, TestGateway, config_text,
};
use super::users::{PASSWORD, Stores, add_user, cli, cli_ok, seed};

pub const WEB_LOGIN_SECRET: &str = "web login test secret, at least 32 bytes";

/// An SMTP server on loopback that accepts every mail (RFC 5321's minimum: EHLO,
/// MAIL, RCPT, DATA, QUIT) and keeps the message bodies.
pub struct SmtpReceiver {
    pub address: std::net::SocketAddr,
    mails: Arc<Mutex<Vec<String>>>,
    _server: LoopbackServer,
}

impl SmtpReceiver {
    pub fn start() -> Self {
        let mails = Arc::new(Mutex::new(Vec::new()));
        let kept = mails.clone();
        let server = LoopbackServer::start(move |stream| {
            let kept = kept.clone();
            async move {
                let _ = session(stream, kept).await;
            }
        });
        Self {
            address: server.address,
            mails,
            _server: server,
        }
    }

    /// The mails received so far.
    pub fn mails(&self) -> Vec<String> {
        self.mails.lock().expect("mails").clone()
    }

    /// Waits for the `n`th mail (1-based) and returns the 6-digit code in it.
    pub fn code(&self, n: usize) -> String {
        let started = Instant::now();
        loop {
            if let Some(mail) = self.mails().get(n - 1) {
                return code_in(mail).unwrap_or_else(|| panic!("no code in mail:\n{mail}"));
            }
            assert!(started.elapsed() < DEADLINE, "mail {n} did not arrive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 receiver.test ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("EHLO") || command.starts_with("HELO") {
            write
                .write_all(b"250-receiver.test\r\n250 8BITMIME\r\n")
                .await?;
        } else if command.starts_with("DATA") {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut body = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                body.push_str(&line);
            }
            mails.lock().expect("mails").push(body);
            write.write_all(b"250 queued\r\n").await?;
        } else if command.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"250 ok\r\n").await?;
        }
    }
}

/// The first run of exactly six digits in a mail.
fn code_in(mail: &str) -> Option<String> {
    mail.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .map(str::to_owned)
}

/// Backends and routes: `/ui` needs a session that passed the second factor,
/// `/light` one that passed the password, `/api` a token or a complete session.
fn routes(backend: std::net::SocketAddr) -> String {
    format!(
        r#"
[backends.echo]
address = "{backend}"

[[route]]
id = "ui"
path_prefix = "/ui"
backend = "echo"
auth = "session"

[[route]]
id = "light"
path_prefix = "/light"
backend = "echo"
auth = "session"
mfa = false

[[route]]
id = "api"
path_prefix = "/api"
backend = "echo"
auth = "token-or-session"
"#
    )
}

/// The `[web_login]` and `[mail]` sections; writes the secret beside the config.
pub fn web_login_sections(dir: &Path, smtp: std::net::SocketAddr) -> String {
    std::fs::write(dir.join("web-login.key"), WEB_LOGIN_SECRET).expect("write key");
    format!(
        r#"
[web_login]
secret = "file:web-login.key"
title = "Test Gateway"

[mail]
from = "Gateway <gateway@example.com>"
smtp_host = "{}"
smtp_port = {}
smtp_tls = "none"
timeout = "5s"
"#,
        smtp.ip(),
        smtp.port()
    )
}

pub fn web_gateway(
    stores: &Stores,
    backend: std::net::SocketAddr,
    smtp: std::net::SocketAddr,
) -> TestGateway {
    TestGateway::start_with(|ports: Ports, dir: &Path| {
        let body = format!(
            "{}{}{}",
            stores.sections(dir),
            web_login_sections(dir, smtp),
            routes(backend)
        );
        config_text(ports, dir, &body)
    })
}

/// A client that keeps cookies, like a browser: sends them back and takes new ones
/// from `Set-Cookie`.
pub struct Browser<'a> {
    gateway: &'a TestGateway,
    pub cookies: BTreeMap<String, String>,
}

impl<'a> Browser<'a> {
    pub fn new(gateway: &'a TestGateway) -> Self {
        Self {
            gateway,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        if self.cookies.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        format!("Cookie: {}\r\n", pairs.join("; "))
    }

    fn keep(&mut self, reply: &Reply) {
        for value in reply.headers.get_all("set-cookie") {
            let text = value.to_str().expect("cookie text");
            let pair = text.split(';').next().expect("pair");
            let (name, value) = pair.split_once('=').expect("name=value");
            let expired = text.contains("Max-Age=0");
            if expired || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// A navigation: `GET` asking for HTML.
    pub async fn get(&mut self, target: &str) -> Reply {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n{}Connection: close\r\n\r\n",
            self.cookie_header()
        );
        let reply = self.gateway.tls().raw(request.as_bytes()).await;
        self.keep(&reply);
        reply
    }

    /// A form submission from the page itself (the browser sends `Origin`).
    pub async fn post(&mut self, target: &str, fields: &[(&str, &str)]) -> Reply {
        self.post_from(
            target,
            fields,
            &format!("https://localhost:{}", self.gateway.https.port()),
        )
        .await
    }

    pub async fn post_from(
        &mut self,
        target: &str,
        fields: &[(&str, &str)],
        origin: &str,
    ) -> Reply {
        let body: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect();
        let body = body.join("&");
        let host = format!("localhost:{}", self.gateway.https.port());
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
            body.len(),
            self.cookie_header()
        );
        let reply = self.gateway.tls().raw(request.as_bytes()).await;
        self.keep(&reply);
        reply
    }

    /// The password step: the login page, then its form with the test password.
    /// Returns the page's CSRF token and the reply to the form.
    pub async fn password(&mut self, email: &str) -> (String, Reply) {
        let page = self.get("/login").await;
        let csrf = field(&page.text(), "csrf");
        let reply = self
            .post(
                "/login",
                &[("csrf", &csrf), ("email", email), ("password", PASSWORD)],
            )
            .await;
        (csrf, reply)
    }

    /// Submits a second-factor code (mailed, from the app, or a recovery code).
    pub async fn code(&mut self, csrf: &str, code: &str) -> Reply {
        self.post(
            "/login/verify",
            &[("csrf", csrf), ("action", "verify"), ("code", code)],
        )
        .await
    }

    pub fn session(&self) -> Option<String> {
        self.cookies.get("__Host-portcullis-session").cloned()
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A hidden field's value in a page.
pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in:\n{html}"))
        + marker.len();
    let end = html[start..].find('"').expect("end of value") + start;
    html[start..end]
        .replace("&amp;", "&")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
}

/// Logs in with the password and the mailed code; returns the reply to the code.
pub async fn log_in(
    browser: &mut Browser<'_>,
    smtp: &SmtpReceiver,
    email: &str,
    next: &str,
) -> Reply {
    let page = browser.get(&format!("/login?next={}", encode(next))).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let csrf = field(&page.text(), "csrf");
    let mails = smtp.mails().len();
    let reply = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("next", next),
                ("email", email),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    let verify = reply.header("location").expect("location");
    let page = browser.get(&verify).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let code = smtp.code(mails + 1);
    browser
        .post(
            "/login/verify",
            &[
                ("csrf", &csrf),
                ("next", next),
                ("action", "verify"),
                ("code", &code),
            ],
        )
        .await
}

#[tokio::test]
async fn password_and_mailed_code_open_a_session_that_reaches_ui_routes() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let stores = Stores::sqlite();
    let gateway = web_gateway(&stores, backend.address, smtp.address);
    seed(&gateway.config);
    let mut browser = Browser::new(&gateway);

    // A browser without a session is sent to the login page, and back afterwards.
    let reply = browser.get("/ui/dashboard?tab=2").await;
    assert_eq!(reply.status, 303);
    assert_eq!(
        reply.header("location").as_deref(),
        Some("/login?next=/ui/dashboard%3Ftab%3D2")
    );
    // An API client gets 401 JSON with a challenge instead.
    let api = gateway
        .tls()
        .get("/ui/dashboard", "Accept: application/json\r\n")
        .await;
    assert_eq!(api.status, 401);
    assert!(api.header("www-authenticate").is_some());
    assert!(api.text().starts_with('{'));

    let page = browser.get("/login?next=/ui/dashboard%3Ftab%3D2").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    assert!(page.header("strict-transport-security").is_some());
    let set_cookie = page.header("set-cookie").expect("csrf cookie");
    assert!(set_cookie.starts_with("__Host-portcullis-csrf="));
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let html = page.text();
    assert!(html.contains("<form method=\"post\" action=\"/login\">") && !html.contains("<script"));
    let csrf = field(&html, "csrf");
    assert_eq!(field(&html, "next"), "/ui/dashboard?tab=2");

    // A wrong password: the form again, 401, no session, no mail.
    let wrong = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("email", "ann@example.com"),
                ("password", "wrong"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("Wrong email or password."));
    assert_eq!(browser.session(), None);
    // An unknown user gets exactly the same.
    let unknown = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("email", "nobody@example.com"),
                ("password", "wrong"),
            ],
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.text().replace("nobody", "ann")),
        (401, wrong.text())
    );
    assert!(smtp.mails().is_empty());

    // The right password: a session waiting for its code, and a mail by SMTP.
    let reply = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("next", "/ui/dashboard?tab=2"),
                ("email", "Ann@Example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(
        reply.header("location").as_deref(),
        Some("/login/verify?next=/ui/dashboard%3Ftab%3D2")
    );
    let cookie = reply.header("set-cookie").expect("session cookie");
    for attribute in [
        "__Host-portcullis-session=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let password_session = browser.session().expect("session");
    let code = smtp.code(1);
    let mail = &smtp.mails()[0];
    assert!(
        mail.contains("To: ann@example.com")
            && mail.contains("From: Gateway <gateway@example.com>"),
        "{mail}"
    );

    // Password alone: mfa routes send the browser to the second factor; routes with
    // `mfa = false` admit it.
    let reply = browser.get("/ui").await;
    assert_eq!(reply.status, 303);
    assert_eq!(
        reply.header("location").as_deref(),
        Some("/login/verify?next=/ui")
    );
    let api = gateway
        .tls()
        .get(
            "/ui",
            &format!("Cookie: __Host-portcullis-session={password_session}\r\n"),
        )
        .await;
    assert_eq!(api.status, 401);
    assert!(api.text().contains("second factor"));
    assert_eq!(browser.get("/light").await.status, 200);

    let page = browser
        .get("/login/verify?next=/ui/dashboard%3Ftab%3D2")
        .await;
    assert!(page.text().contains("a••@example.com"), "{}", page.text());
    // A wrong code: refused, the session stays at the password.
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let reply = browser.code(&csrf, wrong_code).await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("wrong or has expired"));

    let reply = browser
        .post(
            "/login/verify",
            &[
                ("csrf", &csrf),
                ("next", "/ui/dashboard?tab=2"),
                ("action", "verify"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(
        reply.header("location").as_deref(),
        Some("/ui/dashboard?tab=2")
    );
    let complete = browser.session().expect("session");
    assert_ne!(
        complete, password_session,
        "a new id after the second factor"
    );

    // The old id is gone; the new one reaches the UI with verified identity headers
    // and without the gateway's cookies.
    let old = gateway
        .tls()
        .get(
            "/light",
            &format!("Cookie: __Host-portcullis-session={password_session}\r\n"),
        )
        .await;
    assert_eq!(old.status, 401);
    let reply = browser.get("/ui/dashboard?tab=2").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let received = backend.received().into_iter().last().expect("forwarded");
    assert_eq!(received.target, "/ui/dashboard?tab=2");
    assert!(received.header("x-portcullis-account-id").is_some());
    assert!(received.header("x-portcullis-user-id").is_some());
    assert_eq!(
        received.header("cookie"),
        None,
        "the gateway's cookies stay with the gateway"
    );
    // token-or-session routes take the session too.
    assert_eq!(browser.get("/api/thing").await.status, 200);
    // Session routes take no token.
    let token = super::users::token_of(&gateway, "ann@example.com").await;
    assert_eq!(super::users::get_with(&gateway, "/ui", &token).await, 401);
    assert_eq!(
        super::users::get_with(&gateway, "/api/thing", &token).await,
        200
    );

    // The code was used up: a second login cannot reuse it.
    let mut other = Browser::new(&gateway);
    let (other_csrf, reply) = other.password("ann@example.com").await;
    assert_eq!(reply.status, 303);
    let reply = other.code(&other_csrf, &code).await;
    assert_eq!(reply.status, 401, "a used code is refused");

    // Logout needs the form; afterwards the session is gone.
    let page = browser.get("/logout").await;
    assert!(page.text().contains("You are logged in as ann@example.com"));
    let reply = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("You are logged out."));
    assert_eq!(browser.session(), None);
    let replay = gateway
        .tls()
        .get(
            "/ui",
            &format!("Accept: text/html\r\nCookie: __Host-portcullis-session={complete}\r\n"),
        )
        .await;
    assert_eq!(replay.status, 303, "a logged-out session is no session");

    // The audit has the security events and no codes, passwords or session ids.
    let audit = audit_containing(&gateway.audit, "\"logout\"").await;
    for event in [
        "web-login-failed",
        "web-login-password",
        "second-factor-failed",
        "second-factor-passed",
        "logout",
    ] {
        assert!(audit.contains(event), "{event} missing from audit");
    }
    for secret in [
        code.as_str(),
        PASSWORD,
        complete.as_str(),
        password_session.as_str(),
    ] {
        assert!(!audit.contains(secret), "audit leaks a secret");
    }
}

#[tokio::test]
async fn forms_without_the_csrf_token_or_from_another_site_are_refused() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let gateway = web_gateway(&Stores::sqlite(), backend.address, smtp.address);
    seed(&gateway.config);
    let mut browser = Browser::new(&gateway);
    let page = browser.get("/login").await;
    let csrf = field(&page.text(), "csrf");
    let login = [("email", "ann@example.com"), ("password", PASSWORD)];

    // No token, a token for another cookie, the right token from another origin.
    let reply = browser.post("/login", &login).await;
    assert_eq!(reply.status, 403);
    let forged = {
        let mut fields = vec![("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")];
        fields.extend(login);
        browser.post("/login", &fields).await
    };
    assert_eq!(forged.status, 403);
    let mut fields = vec![("csrf", csrf.as_str())];
    fields.extend(login);
    let cross = browser
        .post_from("/login", &fields, "https://evil.example")
        .await;
    assert_eq!(cross.status, 403);
    // Without the cookie, the token alone is worthless.
    let mut cookieless = Browser::new(&gateway);
    assert_eq!(cookieless.post("/login", &fields).await.status, 403);
    assert!(
        smtp.mails().is_empty(),
        "no refused form got as far as a password check"
    );

    // A session's cookie on a state-changing request from another site is refused
    // before the backend sees it.
    let reply = log_in(&mut browser, &smtp, "ann@example.com", "/ui").await;
    assert_eq!(reply.status, 303);
    let session = browser.session().expect("session");
    let before = backend.received().len();
    let request = format!(
        "POST /api/things HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nCookie: __Host-portcullis-session={session}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let reply = gateway.tls().raw(request.as_bytes()).await;
    assert_eq!(reply.status, 403);
    let request = format!(
        "POST /api/things HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\nCookie: __Host-portcullis-session={session}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(gateway.tls().raw(request.as_bytes()).await.status, 403);
    assert_eq!(backend.received().len(), before);
    // The same request from the site itself goes through.
    let request = format!(
        "POST /api/things HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: https://localhost:{}\r\nCookie: __Host-portcullis-session={session}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        gateway.https.port(),
        gateway.https.port()
    );
    assert_eq!(gateway.tls().raw(request.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn next_never_leaves_the_site() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let gateway = web_gateway(&Stores::sqlite(), backend.address, smtp.address);
    seed(&gateway.config);
    for next in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "/ui/../admin",
    ] {
        let mut browser = Browser::new(&gateway);
        let reply = log_in(&mut browser, &smtp, "ann@example.com", next).await;
        assert_eq!(reply.status, 303);
        assert_eq!(
            reply.header("location").as_deref(),
            Some("/"),
            "next {next:?}"
        );
    }
}

#[tokio::test]
async fn sessions_end_with_revocation_password_change_and_deactivation() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let gateway = web_gateway(&Stores::sqlite(), backend.address, smtp.address);
    seed(&gateway.config);
    add_user(&gateway.config, "bob@example.com", "Acme", &[]);
    let mut ann = Browser::new(&gateway);
    assert_eq!(
        log_in(&mut ann, &smtp, "ann@example.com", "/ui")
            .await
            .status,
        303
    );
    let mut bob = Browser::new(&gateway);
    assert_eq!(
        log_in(&mut bob, &smtp, "bob@example.com", "/ui")
            .await
            .status,
        303
    );
    assert_eq!(ann.get("/ui").await.status, 200);

    // `session revoke` ends ann's sessions on every instance, and only hers; her API
    // tokens are untouched.
    let token = super::users::token_of(&gateway, "ann@example.com").await;
    let out = cli_ok(
        &gateway.config,
        &["session", "revoke", "--user", "ann@example.com"],
        None,
    );
    assert!(out.contains("ended"), "{out}");
    eventually(&mut ann, "/ui", 303).await;
    assert_eq!(bob.get("/ui").await.status, 200);
    assert_eq!(
        super::users::get_with(&gateway, "/api/x", &token).await,
        200
    );
    // A new login works again.
    assert_eq!(
        log_in(&mut ann, &smtp, "ann@example.com", "/ui")
            .await
            .status,
        303
    );
    assert_eq!(ann.get("/ui").await.status, 200);

    // A password change ends the sessions.
    let output = cli(
        &gateway.config,
        &["user", "passwd", "ann@example.com", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(output.status.success());
    eventually(&mut ann, "/ui", 303).await;

    // Deactivation too.
    cli_ok(
        &gateway.config,
        &["user", "deactivate", "bob@example.com"],
        None,
    );
    eventually(&mut bob, "/ui", 303).await;
}

/// The audit file once it contains `needle`.
async fn audit_containing(path: &Path, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "`{needle}` never reached the audit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET target` until it answers `status`.
async fn eventually(browser: &mut Browser<'_>, target: &str, status: u16) {
    let started = Instant::now();
    loop {
        let got = browser.get(target).await.status;
        if got == status {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "still {got}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The setup key shown on the enrollment page.
fn setup_key(html: &str) -> Vec<u8> {
    let marker = "<code class=\"secret\">";
    let start = html.find(marker).expect("setup key") + marker.len();
    let end = html[start..].find('<').expect("end") + start;
    let key: String = html[start..end].split_whitespace().collect();
    data_encoding::BASE32_NOPAD
        .decode(key.as_bytes())
        .expect("base32")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .try_into()
        .expect("seconds")
}

/// A code from the app for a step no earlier than `after`.
async fn totp_code(secret: &[u8], after: i64) -> (i64, String) {
    use portcullis::login::totp::{code_at, step_of};
    loop {
        let step = step_of(now());
        if step > after {
            return (step, code_at(secret, step));
        }
        // SECURITY under test: a step is good once, so wait for the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn authenticator_app_enrollment_login_replay_and_recovery_codes() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let gateway = web_gateway(&Stores::sqlite(), backend.address, smtp.address);
    seed(&gateway.config);
    let mut browser = Browser::new(&gateway);

    // Enrollment needs a complete session.
    let reply = browser.get("/login/totp").await;
    assert_eq!(reply.status, 303);
    assert_eq!(
        reply.header("location").as_deref(),
        Some("/login?next=/login/totp")
    );
    assert_eq!(
        log_in(&mut browser, &smtp, "ann@example.com", "/login/totp")
            .await
            .status,
        303
    );

    let page = browser.get("/login/totp").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains("<svg") && html.contains("No authenticator app is set up yet"),
        "{html}"
    );
    let secret = setup_key(&html);
    let csrf = field(&html, "csrf");
    // A wrong code does not enroll.
    let reply = browser
        .post("/login/totp", &[("csrf", &csrf), ("code", "12345")])
        .await;
    assert_eq!(reply.status, 401);
    let (enrolled_step, code) = totp_code(&secret, 0).await;
    let reply = browser
        .post("/login/totp", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let html = reply.text();
    let codes: Vec<String> = html
        .split("<li>")
        .skip(1)
        .map(|item| item.split("</li>").next().expect("item").to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{html}");
    let shown = cli_ok(
        &gateway.config,
        &["user", "2fa", "show", "ann@example.com"],
        None,
    );
    assert!(
        shown.contains("authenticator app since") && shown.contains("10 recovery codes left"),
        "{shown}"
    );
    let user = cli_ok(&gateway.config, &["user", "show", "ann@example.com"], None);
    assert!(
        user.contains("2fa            authenticator app since"),
        "{user}"
    );

    // The next login asks for the app, not for a mailed code.
    let mails = smtp.mails().len();
    let mut next = Browser::new(&gateway);
    let (csrf, reply) = next.password("ann@example.com").await;
    assert_eq!(reply.status, 303);
    let page = next.get("/login/verify").await;
    assert!(page.text().contains("authenticator app"), "{}", page.text());
    assert_eq!(smtp.mails().len(), mails, "no mail for app users");
    // The enrollment code was used up: it cannot log in.
    let reply = next.code(&csrf, &code).await;
    assert_eq!(reply.status, 401, "the enrollment step is spent");
    let (step, code) = totp_code(&secret, enrolled_step).await;
    let reply = next.code(&csrf, &code).await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(next.get("/ui").await.status, 200);

    // Replaying that code in another login is refused (the step is used).
    let mut replay = Browser::new(&gateway);
    let (csrf, _) = replay.password("ann@example.com").await;
    let reply = replay.code(&csrf, &code).await;
    assert_eq!(reply.status, 401, "a replayed TOTP code is refused");
    let _ = step;

    // A recovery code logs in once, in any case and without the dash.
    let recovery = codes[0].to_lowercase().replace('-', "");
    let reply = replay.code(&csrf, &recovery).await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    let mut again = Browser::new(&gateway);
    let (csrf, _) = again.password("ann@example.com").await;
    let reply = again.code(&csrf, &codes[0]).await;
    assert_eq!(reply.status, 401, "a recovery code is good once");
    let shown = cli_ok(
        &gateway.config,
        &["user", "2fa", "show", "ann@example.com"],
        None,
    );
    assert!(shown.contains("9 recovery codes left"), "{shown}");

    // `user 2fa reset` (a lost phone): the app is gone, sessions end, codes are mailed.
    let out = cli_ok(
        &gateway.config,
        &["user", "2fa", "reset", "ann@example.com"],
        None,
    );
    assert!(out.contains("removed"), "{out}");
    eventually(&mut next, "/ui", 303).await;
    let shown = cli_ok(
        &gateway.config,
        &["user", "2fa", "show", "ann@example.com"],
        None,
    );
    assert!(shown.contains("emailed codes"), "{shown}");
    let mut fresh = Browser::new(&gateway);
    assert_eq!(
        log_in(&mut fresh, &smtp, "ann@example.com", "/ui")
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn second_factor_attempts_are_limited() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let mut stores = Stores::sqlite();
    stores.extra = "\n[rate_limits]\nsecond_factor = \"3/h per login\"\n".into();
    let gateway = web_gateway(&stores, backend.address, smtp.address);
    seed(&gateway.config);
    let mut browser = Browser::new(&gateway);
    let (csrf, _) = browser.password("ann@example.com").await;
    let code = smtp.code(1);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let reply = browser.code(&csrf, wrong).await;
        statuses.push(reply.status);
    }
    // The fourth attempt is over the limit: even the right code is not looked at.
    let reply = browser.code(&csrf, &code).await;
    statuses.push(reply.status);
    assert_eq!(statuses, [401, 401, 401, 429]);
    assert!(reply.header("retry-after").is_some());
    assert!(reply.text().contains("Too many attempts"));
}

/// `GET /ui` on `gateway` as a browser holding `session`; returns the status.
async fn ui_with(gateway: &TestGateway, session: &str) -> u16 {
    gateway
        .tls()
        .get(
            "/ui",
            &format!("Accept: text/html\r\nCookie: __Host-portcullis-session={session}\r\n"),
        )
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_in_redis_hold_across_instances_and_end_on_all() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let database = super::users::PostgresDatabase::create();
    let stores = Stores {
        postgres: Some(database.url.clone()),
        redis: Some((
            super::users::redis_url(),
            super::rate_limits::unique_prefix("sessions"),
        )),
        ..Stores::sqlite()
    };
    let first = web_gateway(&stores, backend.address, smtp.address);
    let second = web_gateway(&stores, backend.address, smtp.address);
    seed(&first.config);

    // The password on one instance, the code on the other: one session.
    let mut browser = Browser::new(&first);
    let (csrf, reply) = browser.password("ann@example.com").await;
    assert_eq!(reply.status, 303);
    let mut elsewhere = Browser::new(&second);
    elsewhere.cookies = browser.cookies.clone();
    let reply = elsewhere.code(&csrf, &smtp.code(1)).await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    let session = elsewhere.session().expect("session");
    assert_eq!(ui_with(&first, &session).await, 200);
    assert_eq!(ui_with(&second, &session).await, 200);

    // Logging out on one instance ends the session on both.
    let reply = elsewhere.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(ui_with(&first, &session).await, 303);
    assert_eq!(ui_with(&second, &session).await, 303);

    // `session revoke` reaches both instances.
    let mut browser = Browser::new(&second);
    assert_eq!(
        log_in(&mut browser, &smtp, "ann@example.com", "/ui")
            .await
            .status,
        303
    );
    let session = browser.session().expect("session");
    assert_eq!(ui_with(&first, &session).await, 200);
    cli_ok(
        &first.config,
        &["session", "revoke", "--user", "ann@example.com"],
        None,
    );
    for gateway in [&first, &second] {
        let started = Instant::now();
        while ui_with(gateway, &session).await != 303 {
            assert!(started.elapsed() < DEADLINE, "session still good");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
