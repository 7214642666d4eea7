//! The plain-HTTP listener only redirects.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{DEADLINE, EchoBackend, TestGateway, parse_http1, public_catch_all};

async fn plain(gateway: &TestGateway, request: &[u8]) -> (crate::support::Reply, usize) {
    let mut stream = tokio::net::TcpStream::connect(gateway.http)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes))
        .await
        .expect("redirect listener must close the connection")
        .expect("read");
    let responses = bytes.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    (parse_http1(&bytes, "http/1.1"), responses)
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_with_path_and_query() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let request = "GET /api/v3_0/sensors?page=2&q=%2Fx HTTP/1.1\r\nHost: example.com:80\r\n\r\n";
    let (reply, _) = plain(&gateway, request.as_bytes()).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location").as_deref(),
        Some(
            format!(
                "https://example.com:{}/api/v3_0/sensors?page=2&q=%2Fx",
                gateway.https.port()
            )
            .as_str()
        )
    );
    assert!(
        reply.header("strict-transport-security").is_none(),
        "HSTS is only sent over TLS (RFC 6797 §7.2)"
    );
    assert!(backend.received().is_empty());
}

#[tokio::test]
async fn redirect_forwards_no_body_and_answers_once() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    // The body looks like a second request; it must never be read as one.
    let smuggled = "GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let (reply, responses) = plain(&gateway, request.as_bytes()).await;
    assert_eq!(reply.status, 308);
    assert_eq!(responses, 1, "exactly one response on the connection");
    assert!(
        reply
            .header("location")
            .is_some_and(|l| l.ends_with("/login"))
    );
    assert!(backend.received().is_empty());
}

#[tokio::test]
async fn redirect_without_a_trustworthy_host_is_refused() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let (reply, _) = plain(&gateway, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("location").is_none());
    let (reply, _) = plain(&gateway, b"GET / HTTP/1.1\r\nHost: evil.com/path\r\n\r\n").await;
    assert_eq!(reply.status, 400);
}
