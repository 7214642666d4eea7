//! In front of FlexMeasures: tokens and password hashes checked against the reference
//! implementation (itsdangerous 2.2, bcrypt and argon2-cffi from PyPI, run through
//! tests/fixtures/flexmeasures/reference.py), and a gateway on a PostgreSQL database
//! with FlexMeasures' schema (tests/fixtures/flexmeasures/schema.sql) enforcing
//! policies/flexmeasures.toml.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis::secret::Secret;
use portcullis::token::TokenError;
use portcullis::token::flask_security::{
    DEFAULT_SALT, FlaskSecurityKeys, PasswordCheck, password_hmac, verify_password,
};

use super::support::{EchoBackend, Ports, TestGateway, config_text};
use super::users::{PASSWORD, PostgresDatabase, block_on, cli, token_of};

const SECRET: &str = "FlexMeasures' SECRET_KEY, any length";
const OLD_SECRET: &str = "the key before the last rotation";
const SALT: &str = "SECURITY_PASSWORD_SALT of this deployment";

pub fn python() -> PathBuf {
    let path = std::env::var_os("PORTCULLIS_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: `bash .ci/test` installs the FlexMeasures reference (itsdangerous, bcrypt, argon2-cffi)",
        path.display()
    );
    path
}

/// Runs the reference implementation; returns its output.
fn reference(args: &[&str]) -> String {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flexmeasures/reference.py");
    let output = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run the reference");
    assert!(
        output.status.success(),
        "reference {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn now() -> i64 {
    portcullis::directory::now()
}

fn keys(secrets: &[&str]) -> FlaskSecurityKeys {
    let secrets: Vec<Secret<Vec<u8>>> = secrets
        .iter()
        .map(|s| Secret::new(s.as_bytes().to_vec()))
        .collect();
    FlaskSecurityKeys::new(
        &secrets,
        DEFAULT_SALT,
        Duration::from_secs(21_600),
        Duration::from_secs(30),
    )
    .expect("keys")
}

/// A token signed by the reference, as FlexMeasures would issue it.
fn python_token(secret: &str, payload: &serde_json::Value, at: i64) -> String {
    reference(&["token", secret, &payload.to_string(), &at.to_string()])
}

#[test]
fn tokens_made_by_the_reference_verify_here_and_the_reverse() {
    let at = now();
    let v5 = serde_json::json!({"ver": "5", "uid": "uq-ann", "fs_paa": at as f64 + 0.5, "exp": 0});
    let long_uid = "u".repeat(300); // itsdangerous compresses this payload
    let cases = [
        (v5.clone(), "uq-ann", None),
        (serde_json::json!(["uq-ann"]), "uq-ann", None),
        (
            serde_json::json!(["20", "some-hash", "uq-ann"]),
            "uq-ann",
            Some(20),
        ),
        (
            serde_json::json!({"ver": "5", "uid": long_uid, "fs_paa": 1.0, "exp": 0}),
            long_uid.as_str(),
            None,
        ),
    ];
    let keys = keys(&[SECRET, OLD_SECRET]);
    for (payload, uid, user_id) in &cases {
        let token = python_token(SECRET, payload, at);
        let claims = keys.decode(&token, at).expect("reference token verifies");
        assert_eq!(claims.uniquifier, *uid);
        assert_eq!(claims.user_id, *user_id);
        assert_eq!(claims.issued_at, at);
    }
    assert!(
        python_token(SECRET, &cases[3].0, at).split('.').next() == Some(""),
        "the long payload was compressed (a leading `.`)"
    );
    // Signed with a fallback key: still valid. With an unknown key: not.
    assert!(keys.decode(&python_token(OLD_SECRET, &v5, at), at).is_ok());
    assert_eq!(
        keys.decode(&python_token("another deployment", &v5, at), at),
        Err(TokenError::BadSignature)
    );
    // Older than the max age.
    assert_eq!(
        keys.decode(&python_token(SECRET, &v5, at - 21_601), at),
        Err(TokenError::Expired)
    );

    // The reverse: what the gateway issues, the reference (and so FlexMeasures) loads.
    let ours = keys.issue("uq-ann", at as f64 + 0.25);
    let loaded = reference(&[
        "verify",
        &serde_json::json!([OLD_SECRET, SECRET]).to_string(),
        &ours,
        "21600",
        &at.to_string(),
    ]);
    let loaded: serde_json::Value = serde_json::from_str(&loaded).expect("payload");
    assert_eq!(loaded["ver"], "5");
    assert_eq!(loaded["uid"], "uq-ann");
    assert_eq!(loaded["exp"], 0);
    let refused = reference(&[
        "verify",
        &serde_json::json!(["another deployment"]).to_string(),
        &ours,
        "21600",
        &at.to_string(),
    ]);
    assert_eq!(refused, "invalid: BadTimeSignature");
}

#[test]
fn password_hashes_made_by_the_reference_verify_here_and_the_reverse() {
    for password in [PASSWORD, "ünïcødé and spaces", "x"] {
        assert_eq!(
            password_hmac(password, SALT.as_bytes()),
            reference(&["hmac", SALT, password]),
            "get_hmac of {password:?}"
        );
    }
    let secret = |p: &str| Secret::new(p.to_owned());
    for scheme in ["bcrypt", "argon2"] {
        let stored = reference(&[scheme, SALT, PASSWORD]);
        assert_eq!(
            verify_password(&secret(PASSWORD), &stored, SALT.as_bytes()),
            PasswordCheck::Matches,
            "{scheme}"
        );
        assert_eq!(
            verify_password(&secret("wrong password"), &stored, SALT.as_bytes()),
            PasswordCheck::DoesNotMatch,
            "{scheme}"
        );
        assert_eq!(
            verify_password(&secret(PASSWORD), &stored, b"another salt"),
            PasswordCheck::DoesNotMatch,
            "{scheme}"
        );
    }
    // A bcrypt hash of the gateway's pre-hash is what the reference checks against.
    let prehashed = password_hmac(PASSWORD, SALT.as_bytes());
    let ours = bcrypt::hash(&prehashed[..72], 4).expect("bcrypt");
    assert_eq!(reference(&["check", SALT, PASSWORD, &ours]), "match");
    assert_eq!(reference(&["check", SALT, "wrong", &ours]), "no match");
}

/// A PostgreSQL database with FlexMeasures' schema and users whose passwords were
/// hashed by the reference (bcrypt; argon2 for bea).
struct Fixture {
    database: PostgresDatabase,
}

fn execute(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    block_on(async move {
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        sqlx::raw_sql(&sql).execute(&pool).await.expect("sql");
        pool.close().await;
    });
}

impl Fixture {
    fn create() -> Self {
        let database = PostgresDatabase::create();
        let schema = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flexmeasures/schema.sql"),
        )
        .expect("schema");
        execute(&database.url, &schema);
        let bcrypt = reference(&["bcrypt", SALT, PASSWORD]);
        let argon2 = reference(&["argon2", SALT, PASSWORD]);
        execute(
            &database.url,
            &format!(
                "UPDATE fm_user SET password = '{bcrypt}' WHERE id <> 30; \
                 UPDATE fm_user SET password = '{argon2}' WHERE id = 30;"
            ),
        );
        Self { database }
    }
}

/// A gateway with the FlexMeasures directory and policy in front of `backend`.
fn gateway(
    fixture: &Fixture,
    backend: &EchoBackend,
    flexmeasures: &str,
    extra: &str,
) -> TestGateway {
    TestGateway::start_with(|ports: Ports, dir: &Path| {
        std::fs::write(dir.join("fm-secret.key"), SECRET).expect("key");
        std::fs::write(dir.join("fm-salt.key"), SALT).expect("salt");
        let policies = dir.join("policies");
        std::fs::create_dir(&policies).expect("mkdir");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/flexmeasures.toml"),
            policies.join("flexmeasures.toml"),
        )
        .expect("copy policy");
        let body = format!(
            r#"
[directory]
kind = "flexmeasures"
database = "{database}"
state = "sqlite:{state}"
cache_ttl = "1s"
timeout = "2s"

[flexmeasures]
secret_key = "file:fm-secret.key"
password_salt = "file:fm-salt.key"
{flexmeasures}

[policies]
dir = "policies"

[backends.flexmeasures]
address = "{backend}"
connect_timeout = "500ms"
read_timeout = "2s"
{extra}
"#,
            database = fixture.database.url,
            state = dir.join("state.db").display(),
            backend = backend.address,
        );
        config_text(ports, dir, &body)
    })
}

async fn login(gateway: &TestGateway, email: &str, password: &str) -> (u16, serde_json::Value) {
    super::users::login(gateway, email, password).await
}

async fn get(gateway: &TestGateway, path: &str, token: &str) -> u16 {
    super::users::get_with(gateway, path, token).await
}

#[tokio::test(flavor = "multi_thread")]
async fn flexmeasures_users_log_in_and_reach_only_what_flexmeasures_would_let_them() {
    let backend = EchoBackend::start();
    let fixture = Fixture::create();
    let gateway = gateway(&fixture, &backend, "", "");

    // Logins are checked against FlexMeasures' hashes (bcrypt, and argon2 for bea);
    // the token is one FlexMeasures itself accepts.
    let (status, json) = login(&gateway, "Ann@A.example.com", PASSWORD).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["user_id"], 20);
    let ann = json["auth_token"].as_str().expect("token").to_owned();
    let loaded = reference(&[
        "verify",
        &serde_json::json!([SECRET]).to_string(),
        &ann,
        "21600",
        &now().to_string(),
    ]);
    assert!(loaded.contains(r#""uid": "uq-ann""#), "{loaded}");
    let bea = token_of(&gateway, "bea@b.example.com").await;
    for (email, password) in [
        ("ann@a.example.com", "wrong password"),
        ("gone@a.example.com", PASSWORD),
        ("nobody@a.example.com", PASSWORD),
    ] {
        assert_eq!(login(&gateway, email, password).await.0, 401, "{email}");
    }

    // Members reach their own account's sensors, not another account's.
    assert_eq!(get(&gateway, "/api/v3_0/sensors/100/data", &ann).await, 200);
    let received = backend.only();
    assert_eq!(
        received.header("x-portcullis-user-id").as_deref(),
        Some("20")
    );
    assert_eq!(
        received.header("x-portcullis-account-id").as_deref(),
        Some("2")
    );
    assert_eq!(
        received.header("x-portcullis-account-roles").as_deref(),
        Some("Prosumer")
    );
    assert_eq!(get(&gateway, "/api/v3_0/sensors/101/data", &ann).await, 403);
    assert_eq!(get(&gateway, "/api/v3_0/assets/11", &ann).await, 403);
    assert_eq!(get(&gateway, "/api/v3_0/accounts/3", &ann).await, 403);
    assert_eq!(get(&gateway, "/api/v3_0/users/30", &ann).await, 403);
    assert_eq!(
        backend.received().len(),
        1,
        "refusals never reach FlexMeasures"
    );

    // A token FlexMeasures issued (made by the reference) works the same way; the
    // consultant reads the consultancy's client, not other accounts.
    let consultant = python_token(
        SECRET,
        &serde_json::json!({"ver": "5", "uid": "uq-consultant", "fs_paa": now() as f64, "exp": 0}),
        now(),
    );
    assert_eq!(
        get(&gateway, "/api/v3_0/sensors/100", &consultant).await,
        200
    );
    assert_eq!(
        get(&gateway, "/api/v3_0/accounts/2", &consultant).await,
        200
    );
    assert_eq!(
        get(&gateway, "/api/v3_0/sensors/101", &consultant).await,
        403
    );

    // Public assets are readable by everyone logged in; admins read everything.
    assert_eq!(get(&gateway, "/api/v3_0/assets/12", &bea).await, 200);
    assert_eq!(get(&gateway, "/api/v3_0/sensors/102/data", &bea).await, 200);
    assert_eq!(get(&gateway, "/api/v3_0/sensors/102", "").await, 401);
    let admin = token_of(&gateway, "admin@example.com").await;
    assert_eq!(
        get(&gateway, "/api/v3_0/sensors/101/data", &admin).await,
        200
    );

    // Unknown and non-numeric ids are 404 without reaching FlexMeasures.
    let before = backend.received().len();
    assert_eq!(get(&gateway, "/api/v3_0/sensors/999", &admin).await, 404);
    assert_eq!(get(&gateway, "/api/v3_0/sensors/abc", &admin).await, 404);
    assert_eq!(backend.received().len(), before);

    // SECURITY: account admins cannot rewrite their account (its account roles).
    let alex = token_of(&gateway, "alex@a.example.com").await;
    let patch = gateway
        .tls()
        .raw(
            format!(
                "PATCH /api/v3_0/accounts/2 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {alex}\r\nContent-Type: application/json\r\nContent-Length: 30\r\nConnection: close\r\n\r\n{{\"account_roles\": [\"MDC\", 1]}}"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(patch.status, 403);

    // FlexMeasures ends a user's tokens by changing fs_uniquifier; deactivation too.
    execute(
        &fixture.database.url,
        "UPDATE fm_user SET fs_uniquifier = 'uq-ann-2' WHERE id = 20",
    );
    execute(
        &fixture.database.url,
        "UPDATE fm_user SET active = FALSE WHERE id = 30",
    );
    for token in [&ann, &bea] {
        let started = std::time::Instant::now();
        while get(&gateway, "/api/v3_0/sensors/102", token).await != 401 {
            assert!(
                started.elapsed() < super::support::DEADLINE,
                "token still accepted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn send(gateway: &TestGateway, request: String) -> u16 {
    gateway.tls().raw(request.as_bytes()).await.status
}

fn post(path: &str, token: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_outside_authorization_are_refused_before_flexmeasures_sees_them() {
    let backend = EchoBackend::start();
    let fixture = Fixture::create();
    let gateway = gateway(&fixture, &backend, "", "");
    let ann = token_of(&gateway, "ann@a.example.com").await;
    let admin_token = python_token(SECRET, &serde_json::json!(["uq-admin"]), now());
    for path in [
        format!("/api/v3_0/sensors/100/data?auth_token={admin_token}"),
        format!("/api/v3_0/sensors/100/data?start=1&auth%5Ftoken={admin_token}"),
    ] {
        assert_eq!(get(&gateway, &path, &ann).await, 400, "{path}");
    }
    let data = format!(r#"{{"values": [1, 2], "auth_token": "{admin_token}"}}"#);
    assert_eq!(
        send(&gateway, post("/api/v3_0/sensors/100/data", &ann, &data)).await,
        400
    );
    let python_only = r#"{"values": [NaN], "auth_token": "x"}"#;
    assert_eq!(
        send(
            &gateway,
            post("/api/v3_0/sensors/100/data", &ann, python_only)
        )
        .await,
        400
    );
    assert!(
        backend.received().is_empty(),
        "FlexMeasures saw a refused request"
    );

    // Clean requests go through, their bodies byte for byte.
    let clean = r#"{"values": [1, 2], "unit": "kW"}"#;
    assert_eq!(
        send(&gateway, post("/api/v3_0/sensors/100/data", &ann, clean)).await,
        200
    );
    assert_eq!(backend.only().body, clean.as_bytes());

    // A large body is inspected as it streams: refused, and what FlexMeasures got of
    // it cannot be read as a token.
    let large = format!(
        r#"{{"values": [{}], "auth_token": "{admin_token}"}}"#,
        vec!["1"; 40_000].join(", ")
    );
    assert_eq!(
        send(&gateway, post("/api/v3_0/sensors/100/data", &ann, &large)).await,
        400
    );
    for received in backend.received().iter().skip(1) {
        assert!(
            !String::from_utf8_lossy(&received.body).contains("auth_token"),
            "the token reached FlexMeasures"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_strip_tokens_outside_authorization_are_removed() {
    let backend = EchoBackend::start();
    let fixture = Fixture::create();
    let gateway = gateway(&fixture, &backend, "auth_token_in_request = \"strip\"", "");
    let ann = token_of(&gateway, "ann@a.example.com").await;
    assert_eq!(
        get(
            &gateway,
            "/api/v3_0/sensors/100/data?start=1&auth_token=x&end=2",
            &ann
        )
        .await,
        200
    );
    assert_eq!(
        backend.only().target,
        "/api/v3_0/sensors/100/data?start=1&end=2"
    );
    for body in [
        r#"{"values": [1], "auth_token": "x"}"#.to_owned(),
        format!(
            r#"{{"values": [{}], "auth_token": "x"}}"#,
            vec!["1"; 40_000].join(", ")
        ),
    ] {
        assert_eq!(
            send(&gateway, post("/api/v3_0/sensors/100/data", &ann, &body)).await,
            200
        );
        let received = backend.received().pop().expect("forwarded");
        let value: serde_json::Value = serde_json::from_slice(&received.body).expect("json");
        assert!(value.get("auth_token").is_none(), "stripped");
        assert!(value["values"].is_array());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_may_be_passed_through_to_flexmeasures_within_the_login_limit() {
    let backend = EchoBackend::start();
    let fixture = Fixture::create();
    let gateway = gateway(
        &fixture,
        &backend,
        "login = \"pass-through\"\nlogin_backend = \"flexmeasures\"",
        "\n[rate_limits]\nlogin = \"2/h per ip\"\n",
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(login(&gateway, "ann@a.example.com", PASSWORD).await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let received = backend.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].target, "/api/requestAuthToken");
    assert!(String::from_utf8_lossy(&received[0].body).contains("ann@a.example.com"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lockouts_live_in_the_state_database_and_users_are_flexmeasures_own() {
    let backend = EchoBackend::start();
    let fixture = Fixture::create();
    let gateway = gateway(
        &fixture,
        &backend,
        "",
        "\n[rate_limits]\nlogin_failures = \"2/h per login\"\nlockout = \"5m\"\n",
    );
    for _ in 0..3 {
        assert_eq!(login(&gateway, "ann@a.example.com", "wrong").await.0, 401);
    }
    assert_eq!(login(&gateway, "ann@a.example.com", PASSWORD).await.0, 429);
    let listed = cli(&gateway.config, &["lockout", "list"], None);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("login=ann@a.example.com"),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let refused = cli(&gateway.config, &["user", "list"], None);
    assert_eq!(refused.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("managed in FlexMeasures"));
}
