//! What the README promises a newcomer: `portcullis demo` serves the demo backend over
//! https://localhost, redirects http, and refuses what it should.

use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{DEADLINE, TlsClient, free_ports, parse_http1, wait_until_listening};

/// Kills the demo when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_serves_the_backend_over_https_and_redirects_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let [https, http] = free_ports();
    let _demo = Running(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "demo",
                "--https-port",
                &https.port().to_string(),
                "--http-port",
                &http.port().to_string(),
            ])
            .arg("--certs")
            .arg(&certs)
            .arg("--data")
            .arg(dir.path().join("demo-data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
    wait_until_listening(https);
    wait_until_listening(http);
    let ca = std::fs::read_to_string(certs.join("dev-ca.pem")).expect("demo wrote its CA");
    let client = TlsClient::new(https, &ca);

    let page = client.get("/", "").await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("Hello from the demo backend"),
        "{}",
        page.text()
    );
    assert!(
        page.text().contains("x-forwarded-proto</th><td>https"),
        "{}",
        page.text()
    );
    assert!(page.header("strict-transport-security").is_some());
    assert_eq!(client.h2("GET", "/", &[]).await.status, 200);
    assert_eq!(client.get("/private", "").await.status, 401);

    // The demo user's password is in a file; its token opens /private.
    let data = dir.path().join("demo-data");
    let password = std::fs::read_to_string(data.join("demo-password")).expect("password file");
    let body = serde_json::json!({"email": "demo@example.com", "password": password.trim()});
    let login = client
        .post(
            "/api/requestAuthToken",
            "application/json",
            &body.to_string(),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let json: serde_json::Value = serde_json::from_slice(&login.body).expect("json");
    let token = json["auth_token"].as_str().expect("token");
    let private = client
        .get("/private", &format!("Authorization: {token}\r\n"))
        .await;
    assert_eq!(private.status, 200);
    assert!(
        private
            .text()
            .contains("x-portcullis-roles</th><td>account-admin"),
        "{}",
        private.text()
    );
    assert_eq!(client.get("/a/../b", "").await.status, 400);

    let mut plain = tokio::net::TcpStream::connect(http)
        .await
        .expect("connect http");
    plain
        .write_all(b"GET /any/path?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(DEADLINE, plain.read_to_end(&mut bytes))
        .await
        .expect("redirect closes")
        .expect("read");
    let redirect = parse_http1(&bytes, "http/1.1");
    assert_eq!(redirect.status, 308);
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://localhost:{}/any/path?x=1", https.port()))
    );
}
