//! Harness for tests with users: a directory on SQLite or a fresh PostgreSQL
//! database, Redis with a namespace of its own, and the admin CLI.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::support::{Ports, TestGateway, config_text};

/// The token signing secret every test gateway shares.
pub const TOKEN_SECRET: &str = "integration-test token secret, 32+ bytes long";
/// The identity-header signing secret, in `signing.key` beside every test config.
pub const SIGNING_SECRET: &str = "backend verification secret, 32+ bytes";
pub const PASSWORD: &str = "correct horse battery";

pub fn postgres_admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A PostgreSQL database of its own, dropped at the end of the test.
pub struct PostgresDatabase {
    pub url: String,
    name: String,
}

/// Runs a future to completion on a thread of its own (callers may be inside a runtime).
pub fn block_on<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(future)
            })
            .join()
            .expect("thread")
    })
}

impl PostgresDatabase {
    pub fn create() -> Self {
        let name = format!("portcullis_test_{}", uuid::Uuid::new_v4().simple());
        let admin = postgres_admin_url();
        block_on(async {
            use sqlx::Connection as _;
            let mut connection = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL must run on 127.0.0.1:5432 (bash .ci/test starts it)");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut connection)
                .await
                .expect("create database");
        });
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let admin = postgres_admin_url();
        let name = self.name.clone();
        block_on(async move {
            use sqlx::Connection as _;
            if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await;
            }
        });
    }
}

/// Where users live for a test gateway.
#[derive(Clone)]
pub struct Stores {
    /// `None`: a SQLite file in the gateway's directory.
    pub postgres: Option<String>,
    /// Redis URL and key prefix.
    pub redis: Option<(String, String)>,
    pub extra: String,
    /// `[directory] change_poll`.
    pub change_poll: &'static str,
    /// `[tokens] secrets`, first signing; written to files beside the config.
    pub secrets: Vec<&'static str>,
}

impl Stores {
    pub fn sqlite() -> Self {
        Self {
            postgres: None,
            redis: None,
            extra: String::new(),
            change_poll: "50ms",
            secrets: vec![TOKEN_SECRET],
        }
    }

    /// The `[directory]`, `[tokens]` and `[redis]` sections; writes the key file.
    pub fn sections(&self, dir: &Path) -> String {
        let mut secrets = Vec::new();
        for (index, secret) in self.secrets.iter().enumerate() {
            std::fs::write(dir.join(format!("token-{index}.key")), secret).expect("write key");
            secrets.push(format!("\"file:token-{index}.key\""));
        }
        let secrets = secrets.join(", ");
        std::fs::write(dir.join("signing.key"), SIGNING_SECRET).expect("write key");
        let database = match &self.postgres {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", dir.join("portcullis.db").display()),
        };
        let change_poll = self.change_poll;
        let mut text = format!(
            r#"
[directory]
database = "{database}"
bcrypt_cost = 4
change_poll = "{change_poll}"
timeout = "1s"

[tokens]
secrets = [{secrets}]
"#
        );
        if let Some((url, prefix)) = &self.redis {
            text.push_str(&format!(
                "\n[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout = \"300ms\"\n"
            ));
        }
        text.push_str(&self.extra);
        text
    }
}

/// Backends and routes: `/public` anonymous, everything else needs a token.
pub fn token_routes(backend: std::net::SocketAddr) -> String {
    format!(
        r#"
[backends.echo]
address = "{backend}"
connect_timeout = "500ms"
read_timeout = "2s"

[[route]]
id = "public"
path_prefix = "/public"
backend = "echo"
auth = "public"

[[route]]
id = "api"
path_prefix = "/"
backend = "echo"
auth = "token"
"#
    )
}

/// A gateway in front of `backend` with users in `stores`.
pub fn gateway(stores: &Stores, backend: std::net::SocketAddr) -> TestGateway {
    TestGateway::start_with(|ports: Ports, dir: &Path| {
        let body = format!("{}{}", stores.sections(dir), token_routes(backend));
        config_text(ports, dir, &body)
    })
}

/// Runs the admin CLI against a gateway's configuration.
pub fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portcullis");
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// Runs the CLI and insists it succeeds; returns stdout.
pub fn cli_ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let output = cli(config, args, stdin);
    assert!(
        output.status.success(),
        "portcullis {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Adds account `Acme` (Prosumer) and user `ann@example.com` (account-admin).
pub fn seed(config: &Path) {
    cli_ok(
        config,
        &["account", "add", "Acme", "--role", "Prosumer"],
        None,
    );
    cli_ok(
        config,
        &[
            "user",
            "add",
            "--email",
            "ann@example.com",
            "--account",
            "Acme",
            "--role",
            "account-admin",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
}

/// Runs `user add` with `password` on stdin; returns what the CLI did.
pub fn try_add_user(
    config: &Path,
    email: &str,
    account: &str,
    roles: &[&str],
    password: &str,
) -> Output {
    let mut args = vec![
        "user",
        "add",
        "--email",
        email,
        "--account",
        account,
        "--password-stdin",
    ];
    for role in roles {
        args.extend(["--role", role]);
    }
    cli(config, &args, Some(&format!("{password}\n")))
}

/// Adds a user with the test password to an existing account.
pub fn add_user(config: &Path, email: &str, account: &str, roles: &[&str]) {
    let output = try_add_user(config, email, account, roles, PASSWORD);
    assert!(
        output.status.success(),
        "user add {email} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Logs `email` in with the test password; returns the token.
pub async fn token_of(gateway: &TestGateway, email: &str) -> String {
    let (status, json) = login(gateway, email, PASSWORD).await;
    assert_eq!(status, 200, "{email}: {json}");
    json["auth_token"].as_str().expect("token").to_owned()
}

/// Logs in over HTTPS; returns the token and user id.
pub async fn login(gateway: &TestGateway, email: &str, password: &str) -> (u16, serde_json::Value) {
    login_with(&gateway.tls(), email, password).await
}

/// Logs in with `client` (a gateway of the test's own or a separate process);
/// returns the status and the JSON answer (`Null` when it is not JSON).
pub async fn login_with(
    client: &super::support::TlsClient,
    email: &str,
    password: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"email": email, "password": password}).to_string();
    let reply = client
        .post("/api/requestAuthToken", "application/json", &body)
        .await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status, json)
}

pub async fn token(gateway: &TestGateway) -> String {
    let (status, json) = login(gateway, "ann@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{json}");
    json["auth_token"].as_str().expect("auth_token").to_owned()
}

/// `GET path` with `Authorization: <value>`; returns the status.
pub async fn get_with(gateway: &TestGateway, path: &str, authorization: &str) -> u16 {
    gateway
        .tls()
        .get(path, &format!("Authorization: {authorization}\r\n"))
        .await
        .status
}

/// Polls until `GET path` with the token answers `status`, within the deadline.
pub async fn eventually_status(
    gateway: &TestGateway,
    token: &str,
    status: u16,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        let got = get_with(gateway, "/data", token).await;
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < super::support::DEADLINE,
            "still {got}, expected {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
