//! Proxied and refused responses over both protocols, all with HSTS.

use crate::support::{ClosedPort, EchoBackend, TestGateway, public_catch_all};

const HSTS: &str = "max-age=31536000";

#[tokio::test]
async fn http1_and_h2_both_reach_the_backend_with_hsts() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();

    let h1 = client.get("/one?x=1", "").await;
    assert_eq!(h1.status, 200, "{}", h1.text());
    assert_eq!(h1.text(), r#"{"echo":true}"#);
    assert_eq!(
        h1.header("strict-transport-security").as_deref(),
        Some(HSTS)
    );
    assert_eq!(
        h1.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );

    assert_eq!(h1.protocol, "http/1.1");
    let h2 = client.h2("GET", "/two", &[]).await;
    assert_eq!(h2.status, 200);
    assert_eq!(h2.protocol, "h2");
    assert_eq!(
        h2.header("strict-transport-security").as_deref(),
        Some(HSTS)
    );

    let received = backend.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].target, "/one?x=1");
    assert_eq!(received[1].target, "/two");
    // The request id the client sees is the one the backend got.
    assert_eq!(
        h1.header("x-request-id"),
        received[0].header("x-request-id")
    );
}

#[tokio::test]
async fn unmatched_requests_get_404_with_hsts_and_never_reach_a_backend() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&format!(
        r#"[backends.echo]
address = "{}"

[[route]]
id = "api"
host = "api.example.com"
path_prefix = "/api"
backend = "echo"
auth = "public"
"#,
        backend.address
    ));
    let client = gateway.tls();
    for (host, target) in [
        ("localhost", "/api/x"),
        ("api.example.com", "/apix"),
        ("api.example.com", "/"),
    ] {
        let reply = client
            .raw(
                format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        assert_eq!(reply.status, 404, "{host}{target}");
        assert_eq!(reply.text(), r#"{"status":404,"message":"Not found."}"#);
        assert_eq!(
            reply.header("strict-transport-security").as_deref(),
            Some(HSTS)
        );
    }
    let h2 = client.h2("GET", "/api/x", &[]).await;
    assert_eq!(h2.status, 404);
    assert_eq!(
        h2.header("strict-transport-security").as_deref(),
        Some(HSTS)
    );
    assert!(backend.received().is_empty());

    let reply = client
        .raw(b"GET /api/sensors HTTP/1.1\r\nHost: API.example.com:443\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(backend.only().target, "/api/sensors");
}

#[tokio::test]
async fn routes_needing_credentials_refuse_anonymous_callers_with_401() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&format!(
        r#"[backends.echo]
address = "{}"

[[route]]
id = "private"
path_prefix = "/private"
backend = "echo"
auth = "token"

[[route]]
id = "public"
path_prefix = "/"
backend = "echo"
auth = "public"
"#,
        backend.address
    ));
    let client = gateway.tls();
    let reply = client
        .get("/private/data", "Authorization: Bearer anything\r\n")
        .await;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reply.header("strict-transport-security").as_deref(),
        Some(HSTS)
    );
    let h2 = client.h2("GET", "/private", &[]).await;
    assert_eq!(h2.status, 401);
    assert!(
        backend.received().is_empty(),
        "a refused request reached the backend"
    );
}

#[tokio::test]
async fn hsts_follows_the_configuration() {
    let backend = EchoBackend::start();
    let body = format!(
        "[hsts]\nmax_age = \"730d\"\ninclude_subdomains = true\npreload = true\n\n{}",
        public_catch_all(backend.address)
    );
    let gateway = TestGateway::start(&body);
    let reply = gateway.tls().get("/", "").await;
    assert_eq!(
        reply.header("strict-transport-security").as_deref(),
        Some("max-age=63072000; includeSubDomains; preload")
    );
    // A refusal from a second gateway whose backend is gone carries it as well.
    let down = ClosedPort::new();
    let gone = TestGateway::start(&format!(
        "[hsts]\nmax_age = 600\n\n{}",
        public_catch_all(down.address)
    ));
    let reply = gone.tls().get("/", "").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.header("strict-transport-security").as_deref(),
        Some("max-age=600")
    );
}

#[tokio::test]
async fn request_bodies_and_methods_are_forwarded_unchanged() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let body = r#"{"email":"a@example.com","values":[1,2,3]}"#;
    let request = format!(
        "POST /api/v3_0/sensors/1/data HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = gateway.tls().raw(request.as_bytes()).await;
    assert_eq!(reply.status, 200);
    let received = backend.only();
    assert_eq!(received.method, "POST");
    assert_eq!(received.body.as_ref(), body.as_bytes());
    assert_eq!(
        received.header("content-type").as_deref(),
        Some("application/json")
    );
}
