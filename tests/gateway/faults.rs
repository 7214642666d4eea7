//! Faults in the stores: a PostgreSQL server of the test's own, stopped and started
//! again under a running gateway. While it is down nothing that needs it is allowed
//! (fail closed); when it returns the gateway recovers without a restart, and what
//! was done before is still in force.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{EchoBackend, admin_get, free_ports, wait_until_listening};
use crate::users::{PASSWORD, Stores, cli_ok, eventually_status, gateway, login, seed};

/// A PostgreSQL server in a temporary directory, on a port of its own.
struct OwnPostgres {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The newest installed server's `bin` directory (Debian's layout).
fn postgres_bin() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (.ci/services installs it)");
    let newest = versions
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// `program` as the `postgres` user when the tests run as root (the server refuses
/// to run as root), else as whoever runs them.
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl OwnPostgres {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let output = as_server_user(&postgres_bin().join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("initdb");
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let [address] = free_ports::<1>();
        let mut postgres = Self {
            child: None,
            port: address.port(),
            dir,
        };
        postgres.resume();
        postgres
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on its port.
    fn resume(&mut self) {
        let child = as_server_user(&postgres_bin().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(self.dir.path())
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        wait_until_listening(SocketAddr::from(([127, 0, 0, 1], self.port)));
    }

    /// Stops the server as an operator would in a hurry (fast shutdown: open
    /// connections are cut) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_mid_run_fails_closed_and_recovers_without_a_restart() {
    let backend = EchoBackend::start();
    let mut postgres = OwnPostgres::start();
    let stores = Stores {
        postgres: Some(postgres.url()),
        ..Stores::sqlite()
    };
    let gateway = gateway(&stores, backend.address);
    seed(&gateway.config);
    let (status, json) = login(&gateway, "ann@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{json}");
    let token = json["auth_token"].as_str().expect("token").to_owned();
    eventually_status(&gateway, &token, 200).await;

    postgres.stop();
    // Cached users are trusted only while the change feed was read recently (about
    // a second here); after that, 503, never a guess, and nothing forwarded.
    eventually_status(&gateway, &token, 503).await;
    let forwarded = backend.received().len();
    for _ in 0..5 {
        assert_eq!(crate::users::get_with(&gateway, "/data", &token).await, 503);
    }
    assert_eq!(backend.received().len(), forwarded);
    let (status, _) = login(&gateway, "ann@example.com", PASSWORD).await;
    assert_eq!(status, 503, "logins fail closed too");
    let ready = admin_get(
        &gateway,
        "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ready.status, 503);

    postgres.resume();
    eventually_status(&gateway, &token, 200).await;
    // A revocation made now takes effect: the gateway reads the database again.
    cli_ok(
        &gateway.config,
        &["token", "revoke", "--user", "ann@example.com"],
        None,
    );
    eventually_status(&gateway, &token, 401).await;
    let (status, _) = login(&gateway, "ann@example.com", PASSWORD).await;
    assert_eq!(status, 200);
}
