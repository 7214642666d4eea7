//! Strip, then set: clients cannot speak for the gateway, on public, token and
//! session routes, over HTTP/1.1 and HTTP/2.

use portcullis::forwarding::is_reserved;

use crate::support::{EchoBackend, Received, TestGateway, public_catch_all};
use crate::users::{Stores, seed};
use crate::web_login::{Browser, SmtpReceiver, log_in, web_gateway};

/// Spellings a backend framework may treat as an identity or forwarding header.
/// The ids are ones no test user has, so a leaked one cannot pass for the real one.
const SPOOFED: &[&str] = &[
    "X-Portcullis-User-Id: 999",
    "x-portcullis-account-id: 999",
    "X_Portcullis_Roles: admin",
    "X.Portcullis.Account-Roles: MDC",
    "X-PORTCULLIS-USER_ID: 999",
    "X-Portcullis-Signature: forged",
    "X-Forwarded-For: 6.6.6.6",
    "X_Forwarded_For: 6.6.6.6",
    "X-Forwarded-Host: evil.com",
    "X-Forwarded-Proto: http",
    "X-Forwarded-Prefix: /admin",
    "Forwarded: for=6.6.6.6;host=evil.com",
    "X-Real-IP: 6.6.6.6",
    "x_real_ip: 6.6.6.6",
    "X-Original-URL: /admin",
    "X-Rewrite-URL: /admin",
    "X-HTTP-Method-Override: DELETE",
    "X-Request-Id: attacker-chosen",
];

/// Values only a spoofed header carries. The spoofed id `999` is compared whole (a
/// request id may contain it), the role `admin` by name (it is part of the verified
/// `account-admin`).
const SPOOFED_VALUES: &[&str] = &[
    "MDC",
    "forged",
    "6.6.6.6",
    "evil.com",
    "/admin",
    "DELETE",
    "attacker-chosen",
];

/// The forwarding headers the gateway sets on every route.
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// What the gateway asserts for `ann@example.com`, user 1 of account 1 (`seed`).
const ANN: &[(&str, &str)] = &[
    ("x-portcullis-user-id", "1"),
    ("x-portcullis-account-id", "1"),
    ("x-portcullis-roles", "account-admin"),
    ("x-portcullis-account-roles", "Prosumer"),
];

/// [`SPOOFED`] as header lines for an HTTP/1.1 request.
fn spoofed_lines() -> String {
    SPOOFED.iter().map(|line| format!("{line}\r\n")).collect()
}

/// [`SPOOFED`] as HTTP/2 header fields (lower case, as HTTP/2 requires), plus `extra`.
fn spoofed_fields(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    SPOOFED
        .iter()
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("header line");
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .chain(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        )
        .collect()
}

/// Sends [`SPOOFED`] over HTTP/2 with `extra`; returns the status.
async fn h2_spoofed(gateway: &TestGateway, target: &str, extra: &[(&str, &str)]) -> u16 {
    let fields = spoofed_fields(extra);
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    gateway.tls().h2("GET", target, &fields).await.status
}

/// The backend got the gateway's forwarding headers, exactly `identity` among the
/// identity headers, and nothing a client claimed.
fn assert_only_gateway_headers(received: &Received, identity: &[(&str, &str)]) {
    for (name, value) in &received.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if is_reserved(name.as_str()) {
            match identity.iter().find(|(n, _)| *n == name.as_str()) {
                Some((_, verified)) => assert_eq!(value, *verified, "{name}"),
                None => assert!(
                    FORWARDING.contains(&name.as_str()),
                    "client header reached the backend: {name}: {value}"
                ),
            }
        }
        assert!(
            value != "999" && !SPOOFED_VALUES.iter().any(|spoofed| value.contains(spoofed)),
            "spoofed value reached the backend: {name}: {value}"
        );
    }
    for (name, verified) in identity {
        assert_eq!(received.header(name).as_deref(), Some(*verified), "{name}");
    }
    assert_eq!(
        received.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        received.header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert!(
        received
            .header("x-request-id")
            .is_some_and(|id| id.len() == 36)
    );
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_over_http1() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let reply = gateway
        .tls()
        .get(
            "/data",
            &format!("{}Accept: application/json\r\n", spoofed_lines()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_ne!(
        reply.header("x-request-id").as_deref(),
        Some("attacker-chosen")
    );
    let received = backend.only();
    assert_only_gateway_headers(&received, &[]);
    assert_eq!(
        received.header("x-forwarded-host").as_deref(),
        Some("localhost")
    );
    assert_eq!(
        received.header("accept").as_deref(),
        Some("application/json"),
        "other headers pass"
    );
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_over_h2() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    assert_eq!(h2_spoofed(&gateway, "/data", &[]).await, 200);
    assert_only_gateway_headers(&backend.only(), &[]);
}

#[tokio::test]
async fn connection_nominations_cannot_remove_gateway_headers() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();
    for connection in [
        "Connection: close, X-Portcullis-User-Id, X-Request-Id",
        "Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, close",
        "Connection: x_forwarded_for, close",
    ] {
        // pingora reads keep-alive from the first `Connection` header, so `close` goes in it.
        let request = format!(
            "GET /c HTTP/1.1\r\nHost: localhost\r\nX-Portcullis-User-Id: 7\r\n{connection}\r\n\r\n"
        );
        let reply = client.raw(request.as_bytes()).await;
        assert_eq!(reply.status, 200, "{connection}: {}", reply.text());
    }
    let received = backend.received();
    assert_eq!(received.len(), 3);
    for request in &received {
        assert_only_gateway_headers(request, &[]);
        assert_eq!(
            request.header("x-forwarded-host").as_deref(),
            Some("localhost")
        );
        assert!(
            request
                .header("connection")
                .is_none_or(|c| !c.to_ascii_lowercase().contains("forwarded"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_token_routes_only_the_verified_identity_reaches_the_backend() {
    let backend = EchoBackend::start();
    let gateway = crate::users::gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    let token = crate::users::token(&gateway).await;

    // pingora reads keep-alive from the first `Connection` header, so `close` goes in it.
    let nominated = "Connection: close, X-Portcullis-Roles, X-Forwarded-For\r\n";
    let reply = gateway
        .tls()
        .get(
            "/data",
            &format!(
                "{}Authorization: Bearer {token}\r\n{nominated}",
                spoofed_lines()
            ),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let bearer = format!("Bearer {token}");
    assert_eq!(
        h2_spoofed(&gateway, "/data", &[("authorization", &bearer)]).await,
        200
    );
    // Refused requests carry the spoofed headers nowhere.
    let refused = gateway.tls().get("/data", &spoofed_lines()).await;
    assert_eq!(refused.status, 401);

    let received = backend.received();
    assert_eq!(received.len(), 2, "the refused request was not forwarded");
    for request in &received {
        assert_only_gateway_headers(request, ANN);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_session_routes_only_the_verified_identity_reaches_the_backend() {
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let gateway = web_gateway(&Stores::sqlite(), backend.address, smtp.address);
    seed(&gateway.config);
    let mut browser = Browser::new(&gateway);
    let reply = log_in(&mut browser, &smtp, "ann@example.com", "/ui/").await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    let cookie = format!(
        "__Host-portcullis-session={}",
        browser.session().expect("session")
    );

    let reply = gateway
        .tls()
        .get(
            "/ui/page",
            &format!(
                "{}Accept: text/html\r\nCookie: {cookie}\r\nConnection: close, X-Portcullis-User-Id\r\n",
                spoofed_lines()
            ),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        h2_spoofed(&gateway, "/ui/page", &[("cookie", &cookie)]).await,
        200
    );
    // A request without the session is sent to the login page, not forwarded.
    let refused = gateway
        .tls()
        .get(
            "/ui/page",
            &format!("{}Accept: text/html\r\n", spoofed_lines()),
        )
        .await;
    assert_eq!(refused.status, 303);

    let received = backend.received();
    assert_eq!(received.len(), 2, "the refused request was not forwarded");
    for request in &received {
        assert_only_gateway_headers(request, ANN);
    }
}
