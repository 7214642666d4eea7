//! Certificates are renewed on disk and served without a restart; a broken renewal
//! never replaces a working certificate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis::dev_certs::DevCertificates;

use crate::support::{
    DEADLINE, EchoBackend, TestGateway, TlsClient, config_text, public_catch_all,
};

/// Replaces a file the way certbot and Kubernetes do: write beside it, then rename.
fn replace(path: &Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

/// Polls until a handshake trusting only `ca_pem` succeeds.
async fn wait_until_served(https: std::net::SocketAddr, ca_pem: &str) {
    let client = TlsClient::new(https, ca_pem);
    let deadline = Instant::now() + DEADLINE;
    while let Err(error) = client.handshake().await {
        assert!(
            Instant::now() < deadline,
            "renewed certificate never served: {error}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn renewed_certificates_are_served_without_restart_and_broken_ones_never() {
    let backend = EchoBackend::start();
    let mut dir = PathBuf::new();
    let gateway = TestGateway::start_with(|ports, tls_dir| {
        dir = tls_dir.to_path_buf();
        config_text(ports, tls_dir, &public_catch_all(backend.address))
            .replace("[tls]\n", "[tls]\nreload_interval = \"50ms\"\n")
    });
    let first = TlsClient::new(gateway.https, &gateway.ca_pem);
    first
        .handshake()
        .await
        .expect("first certificate is served");

    // Renewal: key first, then certificate (a half-renewed pair must not be served).
    let renewed = DevCertificates::generate().expect("certs");
    replace(&dir.join("key.pem"), &renewed.key_pem);
    replace(&dir.join("cert.pem"), &renewed.chain_pem);
    wait_until_served(gateway.https, &renewed.ca_pem).await;
    assert!(
        first.handshake().await.is_err(),
        "the old certificate is no longer served"
    );
    // Requests work over the renewed certificate.
    let reply = TlsClient::new(gateway.https, &renewed.ca_pem)
        .get("/after-renewal", "")
        .await;
    assert_eq!(reply.status, 200);

    // A broken renewal (not PEM) is refused, audited, and the renewed pair stays in
    // service.
    replace(&dir.join("cert.pem"), "this is not a certificate");
    // (The renewal above may also have logged a failure for its half-written state.)
    let deadline = Instant::now() + crate::support::DEADLINE;
    loop {
        let records = crate::audit::records(&gateway.audit, 1).await;
        let events: Vec<&str> = records
            .iter()
            .filter(|r| r["kind"] == "security")
            .filter_map(|r| r["event"].as_str())
            .collect();
        let reloaded = events.iter().rposition(|e| *e == "certificate-reloaded");
        if reloaded.is_some_and(|at| events[at + 1..].contains(&"certificate-reload-failed")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reload failure audited: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    TlsClient::new(gateway.https, &renewed.ca_pem)
        .handshake()
        .await
        .expect("still serving the last good certificate");

    // The reloader is still alive: the next good renewal is picked up.
    let again = DevCertificates::generate().expect("certs");
    replace(&dir.join("key.pem"), &again.key_pem);
    replace(&dir.join("cert.pem"), &again.chain_pem);
    wait_until_served(gateway.https, &again.ca_pem).await;
}
