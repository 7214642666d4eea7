//! End to end in a real browser: headless Chromium (driven over WebDriver by
//! chromedriver) logs in with a password and the code mailed over SMTP, and reaches
//! a UI route. Screenshots are kept in `target/test-artifacts/`.
//!
//! `bash .ci/test` installs Chromium and sets `PORTCULLIS_TEST_BROWSER=required`;
//! without it, a machine lacking Chromium skips this test with a notice.

use std::process::{Child, Command, Stdio};

use fantoccini::{ClientBuilder, Locator};

use super::support::{EchoBackend, free_ports, wait_until_listening};
use super::users::{PASSWORD, Stores, seed};
use super::web_login::{SmtpReceiver, web_gateway};

/// chromedriver on a loopback port; killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn artifacts() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The path the browser is at once it has left `path` (or the deadline passed): a
/// click only starts the navigation it causes.
async fn left(
    client: &fantoccini::Client,
    path: &str,
) -> Result<String, fantoccini::error::CmdError> {
    let started = std::time::Instant::now();
    loop {
        let url = client.current_url().await?;
        if url.path() != path || started.elapsed() > super::support::DEADLINE {
            return Ok(url.path().to_owned());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn chromium_logs_in_with_password_and_mailed_code_and_reaches_the_ui() {
    if !(installed("chromium") && installed("chromedriver")) {
        assert_ne!(
            std::env::var("PORTCULLIS_TEST_BROWSER").as_deref(),
            Ok("required"),
            "chromium and chromedriver are required (bash .ci/test installs them)"
        );
        eprintln!("skipped: chromium or chromedriver is not installed");
        return;
    }
    let backend = EchoBackend::start();
    let smtp = SmtpReceiver::start();
    let gateway = web_gateway(&Stores::sqlite(), backend.address, smtp.address);
    seed(&gateway.config);

    let [port] = free_ports();
    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={}", port.port()))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    wait_until_listening(port);

    let mut capabilities = serde_json::Map::new();
    // The gateway's certificate comes from a per-test CA the browser does not know.
    capabilities.insert("acceptInsecureCerts".into(), true.into());
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1000,800",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", port.port()))
        .await
        .expect("WebDriver session");

    let base = format!("https://localhost:{}", gateway.https.port());
    let result = async {
        client.goto(&format!("{base}/ui/overview")).await?;
        // Sent to the login page, which comes back to the UI afterwards.
        let url = client.current_url().await?;
        assert_eq!(url.path(), "/login", "{url}");
        assert_eq!(url.query(), Some("next=/ui/overview"));
        let shot = client.screenshot().await?;
        std::fs::write(artifacts().join("web-login-1-password.png"), shot).expect("screenshot");
        client
            .find(Locator::Id("email"))
            .await?
            .send_keys("ann@example.com")
            .await?;
        client
            .find(Locator::Id("password"))
            .await?
            .send_keys(PASSWORD)
            .await?;
        client
            .find(Locator::Css("button[type=submit]"))
            .await?
            .click()
            .await?;

        assert_eq!(left(&client, "/login").await?, "/login/verify");
        let code = smtp.code(1);
        let shot = client.screenshot().await?;
        std::fs::write(artifacts().join("web-login-2-code.png"), shot).expect("screenshot");
        client
            .find(Locator::Id("code"))
            .await?
            .send_keys(&code)
            .await?;
        client
            .find(Locator::Css("form button[type=submit]"))
            .await?
            .click()
            .await?;

        assert_eq!(left(&client, "/login/verify").await?, "/ui/overview");
        let source = client.source().await?;
        assert!(source.contains("echo"), "the backend's answer: {source}");
        let shot = client.screenshot().await?;
        std::fs::write(artifacts().join("web-login-3-ui.png"), shot).expect("screenshot");
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    drop(driver);
    result.expect("browser flow");

    // The backend saw the browser as ann, with the session kept from it.
    let received = backend.received().into_iter().last().expect("forwarded");
    assert_eq!(received.target, "/ui/overview");
    assert!(received.header("x-portcullis-user-id").is_some());
    assert_eq!(received.header("cookie"), None);
}
