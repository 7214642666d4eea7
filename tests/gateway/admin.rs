//! The admin listener: health, readiness and metrics of what the gateway decided.

use crate::support::{ClosedPort, EchoBackend, TestGateway, admin_get, metric, public_catch_all};

const GET: &str = "HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn health_and_readiness_answer_on_the_admin_listener_only() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let healthz = admin_get(&gateway, &format!("GET /healthz {GET}")).await;
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"));
    let readyz = admin_get(&gateway, &format!("GET /readyz {GET}")).await;
    assert_eq!(readyz.status, 200);
    assert_eq!(
        admin_get(&gateway, &format!("POST /metrics {GET}"))
            .await
            .status,
        405
    );
    assert_eq!(
        admin_get(&gateway, &format!("GET /admin {GET}"))
            .await
            .status,
        404
    );
    // The public listener does not serve them: they are ordinary requests there.
    gateway.tls().get("/healthz", "").await;
    assert_eq!(backend.only().target, "/healthz");
}

#[tokio::test]
async fn metrics_count_decisions_by_route_and_status() {
    let backend = EchoBackend::start();
    let down = ClosedPort::new();
    let gateway = TestGateway::start(&format!(
        r#"[backends.echo]
address = "{}"

[backends.gone]
address = "{}"

[[route]]
id = "api"
path_prefix = "/api"
backend = "echo"
auth = "public"

[[route]]
id = "private"
path_prefix = "/private"
backend = "echo"
auth = "token"

[[route]]
id = "down"
path_prefix = "/down"
backend = "gone"
auth = "public"
"#,
        backend.address, down.address
    ));
    let client = gateway.tls();
    for target in [
        "/api/a", "/api/b", "/private", "/nothing", "/a/../b", "/down",
    ] {
        client.get(target, "").await;
    }
    let expected = [
        (
            r#"portcullis_requests_total{decision="allowed",route="api",status="200"}"#,
            2.0,
        ),
        (
            r#"portcullis_requests_total{decision="refused",route="private",status="401"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{decision="refused",route="-",status="404"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{decision="refused",route="-",status="400"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{decision="failed",route="down",status="502"}"#,
            1.0,
        ),
        (
            r#"portcullis_request_duration_seconds_count{route="api"}"#,
            2.0,
        ),
    ];
    for (sample, value) in expected {
        assert_eq!(metric(&gateway, sample).await, Some(value), "{sample}");
    }
    let expiry = metric(&gateway, "portcullis_certificate_expiry_timestamp_seconds").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry.is_some_and(|t| t > now), "{expiry:?}");
}
