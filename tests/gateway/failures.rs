//! Backend failures become fixed 502/504 responses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::{ClosedPort, EchoBackend, TestGateway, public_catch_all};

const BAD_GATEWAY: &str = r#"{"status":502,"message":"Bad gateway: the service is unavailable."}"#;
const TIMEOUT: &str =
    r#"{"status":504,"message":"Gateway timeout: the service did not answer in time."}"#;

#[tokio::test]
async fn backend_down_gets_502_with_a_fixed_body() {
    let down = ClosedPort::new();
    let gateway = TestGateway::start(&public_catch_all(down.address));
    let client = gateway.tls();
    let reply = client.get("/x", "").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), BAD_GATEWAY);
    assert!(reply.header("strict-transport-security").is_some());
    let reply = client.h2("GET", "/x", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), BAD_GATEWAY);
}

/// A listener whose accept queue is full: new connections are never completed, so
/// connecting to it times out instead of being refused.
struct BlackHole {
    address: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let address = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        // Fill the backlog; these are never accepted.
        let mut fillers = Vec::new();
        for _ in 0..8 {
            if let Ok(stream) =
                std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
            {
                fillers.push(stream);
            }
        }
        Self {
            address,
            _listener: socket,
            _fillers: fillers,
        }
    }
}

#[tokio::test]
async fn backend_connect_timeout_gets_504() {
    let hole = BlackHole::new();
    let gateway = TestGateway::start(&public_catch_all(hole.address));
    let reply = gateway.tls().get("/slow", "").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.text(), TIMEOUT);
    assert!(reply.header("strict-transport-security").is_some());
}

#[tokio::test]
async fn backend_that_does_not_answer_in_time_gets_504() {
    // The backend answers after 5 s; the route allows 2 s.
    let backend = EchoBackend::start_with_delay(Duration::from_secs(5));
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let reply = gateway.tls().get("/slow", "").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.text(), TIMEOUT);
    assert_eq!(backend.received().len(), 1);
}

#[tokio::test]
async fn tls_backends_are_verified_against_their_ca() {
    let certificates = portcullis::dev_certs::DevCertificates::generate().expect("certs");
    let backend = EchoBackend::start_tls(&certificates);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("backend-ca.pem");
    std::fs::write(&ca, &certificates.ca_pem).expect("write ca");
    let route =
        "[[route]]\nid = \"all\"\npath_prefix = \"/\"\nbackend = \"secure\"\nauth = \"public\"\n";

    // Trusting the backend's CA: the request goes through over TLS.
    let trusted = TestGateway::start(&format!(
        "[backends.secure]\naddress = \"{}\"\ntls = true\nsni = \"localhost\"\nca = \"{}\"\n\n{route}",
        backend.address,
        ca.display()
    ));
    let reply = trusted.tls().get("/over-tls", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(backend.only().target, "/over-tls");

    // Without that CA the backend's certificate is not trusted: 502, nothing forwarded.
    let untrusted = TestGateway::start(&format!(
        "[backends.secure]\naddress = \"{}\"\ntls = true\nsni = \"localhost\"\n\n{route}",
        backend.address
    ));
    let reply = untrusted.tls().get("/refused", "").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), BAD_GATEWAY);

    // Trusting the CA but asking for another name fails hostname verification.
    let wrong_name = TestGateway::start(&format!(
        "[backends.secure]\naddress = \"{}\"\ntls = true\nsni = \"billing.internal\"\nca = \"{}\"\n\n{route}",
        backend.address,
        ca.display()
    ));
    let reply = wrong_name.tls().get("/wrong-name", "").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        backend.received().len(),
        1,
        "only the trusted request arrived"
    );
}

#[tokio::test]
async fn a_full_disk_under_the_audit_log_loses_records_visibly_and_never_blocks_requests() {
    use crate::support::{DEADLINE, config_text, metric};
    let backend = EchoBackend::start();
    // /dev/full accepts the open and fails every write with ENOSPC.
    let gateway = TestGateway::start_with(|ports, dir| {
        let text = config_text(ports, dir, &public_catch_all(backend.address));
        let audit = format!("path = \"{}\"", dir.join("audit.jsonl").display());
        assert!(text.contains(&audit), "{text}");
        text.replace(&audit, "path = \"/dev/full\"")
    });
    let client = gateway.tls();
    for n in 0..20 {
        let reply = client.get(&format!("/x/{n}"), "").await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(backend.received().len(), 20);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let lost = metric(&gateway, "portcullis_audit_write_errors_total")
            .await
            .unwrap_or(0.0);
        if lost >= 20.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{lost} write errors counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&gateway, "portcullis_audit_dropped_total").await,
        Some(0.0),
        "written and failed, not dropped from the queue"
    );
}
