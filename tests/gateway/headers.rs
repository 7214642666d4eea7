//! Strip, then set: clients cannot speak for the gateway.

use portcullis::forwarding::is_reserved;

use crate::support::{EchoBackend, Received, TestGateway, public_catch_all};

/// Spellings a backend framework may treat as an identity or forwarding header.
const SPOOFED: &[&str] = &[
    "X-Portcullis-User-Id: 1",
    "x-portcullis-account-id: 1",
    "X_Portcullis_Roles: admin",
    "X.Portcullis.Account-Roles: MDC",
    "X-PORTCULLIS-USER_ID: 1",
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

/// The backend got the gateway's forwarding headers and nothing a client claimed.
fn assert_only_gateway_headers(received: &Received) {
    for (name, value) in &received.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if is_reserved(name.as_str()) {
            assert!(
                [
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "x-request-id"
                ]
                .contains(&name.as_str()),
                "client header reached the backend: {name}: {value}"
            );
        }
        assert!(
            !value.contains("6.6.6.6") && !value.contains("evil.com") && value != "attacker-chosen",
            "spoofed value reached the backend: {name}: {value}"
        );
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
    let extra: String = SPOOFED.iter().map(|line| format!("{line}\r\n")).collect();
    let reply = gateway
        .tls()
        .get("/data", &format!("{extra}Accept: application/json\r\n"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_ne!(
        reply.header("x-request-id").as_deref(),
        Some("attacker-chosen")
    );
    let received = backend.only();
    assert_only_gateway_headers(&received);
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
    let headers: Vec<(String, String)> = SPOOFED
        .iter()
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("header line");
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let reply = gateway.tls().h2("GET", "/data", &headers).await;
    assert_eq!(reply.status, 200);
    assert_only_gateway_headers(&backend.only());
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
        assert_only_gateway_headers(request);
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
