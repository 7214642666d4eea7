//! Client connections do not stay open for good: `[server] client_idle_timeout`
//! closes an idle HTTP/1.1 keep-alive connection and an HTTP/2 connection without
//! streams, and a connection in use is not cut.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::{DEADLINE, EchoBackend, TestGateway, config_text, public_catch_all};

const IDLE: Duration = Duration::from_secs(1);

fn gateway(backend: &EchoBackend) -> TestGateway {
    TestGateway::start_with(|ports, dir| {
        config_text(ports, dir, &public_catch_all(backend.address)).replacen(
            "[server]\n",
            "[server]\nclient_idle_timeout = \"1s\"\n",
            1,
        )
    })
}

fn get(path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request")
}

/// Waits for `connection` (hyper's connection future) to end; returns how long
/// that took from `idle_since`.
async fn closed_after<F>(connection: tokio::task::JoinHandle<F>, idle_since: Instant) -> Duration {
    tokio::time::timeout(DEADLINE, connection)
        .await
        .expect("the gateway never closed the idle connection")
        .expect("connection task");
    idle_since.elapsed()
}

#[tokio::test]
async fn idle_http1_keepalive_connections_are_closed() {
    let backend = EchoBackend::start();
    let gateway = gateway(&backend);
    let stream = gateway.tls().connect_http1().await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let connection = tokio::spawn(connection);

    // Requests less than the timeout apart keep the connection: it is idle time
    // that counts, not its age.
    for _ in 0..4 {
        let response = sender.send_request(get("/a")).await.expect("response");
        assert_eq!(response.status(), 200);
        drop(response);
        tokio::time::sleep(IDLE / 2).await;
    }
    let response = sender.send_request(get("/a")).await.expect("response");
    assert_eq!(response.status(), 200);
    drop(response);
    let idle_since = Instant::now();
    let waited = closed_after(connection, idle_since).await;
    assert!(waited >= IDLE - Duration::from_millis(100), "{waited:?}");
    assert_eq!(backend.received().len(), 5);
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let backend = EchoBackend::start();
    let gateway = gateway(&backend);
    let stream = gateway.tls().try_connect(&[b"h2"]).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    for _ in 0..4 {
        let response = sender.send_request(get("/b")).await.expect("response");
        assert_eq!(response.status(), 200);
        drop(response);
        tokio::time::sleep(IDLE / 2).await;
    }
    let idle_since = Instant::now();
    let waited = closed_after(connection, idle_since).await;
    assert!(
        waited >= IDLE / 2 - Duration::from_millis(100),
        "{waited:?}"
    );
    assert_eq!(backend.received().len(), 4);
}
