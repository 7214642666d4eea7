//! Graceful shutdown lets in-flight requests finish and then stops.

use std::time::Duration;

use crate::support::{DEADLINE, EchoBackend, TestGateway, public_catch_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight_and_stops() {
    let backend = EchoBackend::start_with_delay(Duration::from_millis(500));
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();
    let in_flight = tokio::spawn(async move { client.get("/in-flight", "").await });
    // Wait until the backend holds the request, then stop the gateway.
    let deadline = std::time::Instant::now() + DEADLINE;
    while backend.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probe = gateway.tls();
    let stopping = tokio::task::spawn_blocking(move || gateway.stop_gracefully());
    let reply = in_flight.await.expect("task");
    assert_eq!(reply.status, 200, "in-flight request must complete");
    stopping.await.expect("gateway stopped");
    // Nothing serves this gateway's certificate any more (the port itself may already
    // belong to another test's gateway, with another CA).
    assert!(
        probe.handshake().await.is_err(),
        "listener closed after shutdown"
    );
}
