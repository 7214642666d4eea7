//! Token validation cost: the hot path (a cached token) and the cold path (signature,
//! age, user, sha256_crypt), plus the login's bcrypt with an unknown email and with a
//! wrong password (they should cost the same: no user enumeration by timing).
//!
//! `cargo bench --bench tokens`; the directory is a SQLite file in a temporary
//! directory, so the numbers are the gateway's own work.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis::identity::{Authenticator, LoginAttempt, VerificationPath};
use portcullis::secret::Secret;
use portcullis::token::{self, TokenKeys};

const SECRET: &str = "benchmark token secret, at least 32 bytes";
const PASSWORD: &str = "correct horse battery";

struct Fixture {
    authenticator: Arc<Authenticator>,
    token: String,
    keys: TokenKeys,
    crypt: String,
    _dir: tempfile::TempDir,
}

fn fixture(bcrypt_cost: u32) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token.key"), SECRET).expect("key");
    let text = format!(
        "[listen]\nhttps = [\"127.0.0.1:1\"]\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
         [directory]\ndatabase = \"sqlite:{}\"\nbcrypt_cost = {bcrypt_cost}\n\
         [tokens]\nsecrets = [\"file:token.key\"]\n",
        dir.path().join("bench.db").display()
    );
    let loaded = portcullis::config::parse(&dir.path().join("bench.toml"), text, Vec::new());
    let config = loaded.config.expect("config");
    let hash = portcullis::identity::password::hash(&Secret::new(PASSWORD.into()), bcrypt_cost)
        .expect("hash");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let directory = portcullis::identity::open_directory(&config)
            .expect("open")
            .expect("directory");
        directory.database().migrate().await.expect("migrate");
        directory
            .add_account("Bench", &[], false)
            .await
            .expect("account");
        directory
            .add_user(
                "Bench",
                "bench@example.com",
                &hash,
                &["admin".into()],
                false,
            )
            .await
            .expect("user");
    });
    let metrics = std::sync::Arc::new(portcullis::metrics::Metrics::new().expect("metrics"));
    let authenticator = Authenticator::start(&config, metrics)
        .expect("start")
        .expect("authenticator");
    let body = format!(r#"{{"email":"bench@example.com","password":"{PASSWORD}"}}"#);
    let issued = runtime
        .block_on(authenticator.login(LoginAttempt::parse(body.as_bytes()).expect("body")))
        .expect("login");
    let keys = TokenKeys::new(
        &[Secret::new(SECRET.as_bytes().to_vec())],
        Duration::from_secs(21_600),
        Duration::from_secs(30),
    )
    .expect("keys");
    let crypt = keys
        .decode(issued.token.expose(), portcullis::directory::now())
        .expect("decode")
        .password_crypt;
    Fixture {
        authenticator,
        token: issued.token.expose().clone(),
        keys,
        crypt,
        _dir: dir,
    }
}

fn tokens(c: &mut Criterion) {
    let fixture = fixture(4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let now = portcullis::directory::now();

    c.bench_function("token/decode (signature and age)", |b| {
        b.iter(|| fixture.keys.decode(&fixture.token, now).expect("valid"));
    });
    c.bench_function("token/forged (refused at the HMAC)", |b| {
        let mut forged = fixture.token.clone();
        forged.push('A');
        b.iter(|| fixture.keys.decode(&forged, now).expect_err("forged"));
    });
    c.bench_function("token/sha256_crypt check", |b| {
        b.iter(|| assert!(!token::password_crypt_matches(&fixture.crypt, "x")));
    });

    let authorization = fixture.token.as_bytes().to_vec();
    // Warm the caches, then measure the hot path as a request sees it.
    runtime
        .block_on(fixture.authenticator.identify(&authorization))
        .expect("valid");
    c.bench_function("identify/cached token", |b| {
        b.to_async(&runtime).iter(|| {
            let authenticator = fixture.authenticator.clone();
            let authorization = authorization.clone();
            async move { authenticator.identify(&authorization).await.expect("valid") }
        });
    });

    // Cold: a token never seen before (another timestamp), same user.
    let mut second = now - 20_000;
    c.bench_function("identify/cold token (full verification)", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                second += 1;
                fixture.keys.issue(1, &fixture.crypt, second).into_bytes()
            },
            |token| {
                let authenticator = fixture.authenticator.clone();
                async move { authenticator.identify(&token).await.expect("valid") }
            },
            BatchSize::SmallInput,
        );
    });
}

fn logins(c: &mut Criterion) {
    // Cost 10 keeps the run short; the ratio between the two is what matters.
    let fixture = fixture(10);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("login (bcrypt cost 10)");
    group.sample_size(20);
    for (name, email) in [
        ("wrong password", "bench@example.com"),
        ("unknown email", "nobody@example.com"),
    ] {
        let body = format!(r#"{{"email":"{email}","password":"not the password"}}"#);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let authenticator = fixture.authenticator.clone();
                let body = body.clone();
                async move {
                    authenticator
                        .login(LoginAttempt::parse(body.as_bytes()).expect("body"))
                        .await
                        .expect_err("refused")
                }
            });
        });
    }
    group.finish();
}

/// FlexMeasures' `SECRET_KEY` in these benches.
const FLEXMEASURES_SECRET: &str = "FlexMeasures' SECRET_KEY";

/// Flask-Security token keys with FlexMeasures' defaults (salt, six hours).
fn flexmeasures_keys() -> portcullis::token::flask_security::FlaskSecurityKeys {
    portcullis::token::flask_security::FlaskSecurityKeys::new(
        &[Secret::new(FLEXMEASURES_SECRET.as_bytes().to_vec())],
        portcullis::token::flask_security::DEFAULT_SALT,
        Duration::from_secs(21_600),
        Duration::from_secs(30),
    )
    .expect("keys")
}

/// FlexMeasures' tokens (Flask-Security): signature, age and payload, without the
/// user lookup (cached users make that a map hit in the gateway).
fn flexmeasures_tokens(c: &mut Criterion) {
    let keys = flexmeasures_keys();
    let now = portcullis::directory::now();
    let token = keys.issue("0c6f8b2b6e0a4f0f9c8a1d2e3f4a5b6c", now as f64);
    c.bench_function("flexmeasures token: decode (v5)", |b| {
        b.iter(|| keys.decode(&token, now).expect("valid"))
    });
    // Same shape, another signature: refused at the HMAC. The signature's first
    // character changes (all its bits count; the last one's spare bits would make
    // some forgeries fail at base64 instead, depending on the time of issue).
    let start = token.rfind('.').expect("signed") + 1;
    let first = if token[start..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{first}{}", &token[..start], &token[start + 1..]);
    c.bench_function("flexmeasures token: forged, refused", |b| {
        b.iter(|| keys.decode(&forged, now).expect_err("forged"))
    });
}

/// Users in the benchmark's FlexMeasures database: every cold check asks PostgreSQL
/// about a user the cache (1 s) no longer holds.
const FLEXMEASURES_USERS: usize = 50_000;

/// A FlexMeasures database of its own on the PostgreSQL the tests use
/// (`PORTCULLIS_TEST_POSTGRES`), dropped at the end.
struct FlexMeasuresDatabase {
    admin: String,
    name: String,
    url: String,
}

impl FlexMeasuresDatabase {
    fn create(runtime: &tokio::runtime::Runtime) -> Option<Self> {
        use sqlx::Connection as _;
        let admin = std::env::var("PORTCULLIS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("portcullis_bench_{}", uuid::Uuid::new_v4().simple());
        let url = format!(
            "{}/{name}",
            admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(base, _)| base)
        );
        let schema = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/flexmeasures/schema.sql"),
        )
        .expect("schema");
        runtime.block_on(async {
            let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await else {
                eprintln!("flexmeasures cold token: skipped, no PostgreSQL at {admin}");
                return None;
            };
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut connection)
                .await
                .expect("create database");
            let mut database = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::raw_sql(&schema).execute(&mut database).await.expect("schema");
            sqlx::raw_sql(&format!(
                "INSERT INTO fm_user (id, email, username, password, active, fs_uniquifier, account_id) \
                 SELECT 1000 + g, 'bench' || g || '@example.com', 'bench' || g, 'unset', TRUE, \
                        'uq-bench-' || g, 2 FROM generate_series(1, {FLEXMEASURES_USERS}) AS g; \
                 INSERT INTO roles_users (user_id, role_id) SELECT 1000 + g, 3 \
                        FROM generate_series(1, {FLEXMEASURES_USERS}) AS g; \
                 ANALYZE;"
            ))
            .execute(&mut database)
            .await
            .expect("users");
            Some(Self { admin, name, url })
        })
    }

    fn execute(&self, runtime: &tokio::runtime::Runtime, sql: &str) {
        use sqlx::Connection as _;
        runtime.block_on(async {
            let mut database = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::raw_sql(sql)
                .execute(&mut database)
                .await
                .expect("sql");
        });
    }
}

impl Drop for FlexMeasuresDatabase {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        runtime.block_on(async move {
            if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await;
            }
        });
    }
}

/// FlexMeasures' tokens, cold: decode plus the user, with roles and account, read from
/// FlexMeasures' PostgreSQL database (what a token costs the first time the gateway
/// sees its user, or after `cache_ttl`).
fn flexmeasures_cold(c: &mut Criterion) {
    let setup = tokio::runtime::Runtime::new().expect("runtime");
    let Some(database) = FlexMeasuresDatabase::create(&setup) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("fm-secret.key"), FLEXMEASURES_SECRET).expect("key");
    std::fs::write(dir.path().join("fm-salt.key"), "FlexMeasures' salt").expect("salt");
    let text = format!(
        "[listen]\nhttps = [\"127.0.0.1:1\"]\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
         [directory]\nkind = \"flexmeasures\"\ndatabase = \"{}\"\ncache_ttl = \"1s\"\n\
         [flexmeasures]\nsecret_key = \"file:fm-secret.key\"\npassword_salt = \"file:fm-salt.key\"\n",
        database.url
    );
    let loaded = portcullis::config::parse(&dir.path().join("bench.toml"), text, Vec::new());
    let config = loaded.config.expect("config");
    let metrics = Arc::new(portcullis::metrics::Metrics::new().expect("metrics"));
    let authenticator = Authenticator::start(&config, metrics)
        .expect("start")
        .expect("authenticator");
    let keys = flexmeasures_keys();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let now = portcullis::directory::now();
    let mut next = 0;
    // FlexMeasures' schema has no index on roles_users.user_id: each lookup of a
    // user's roles reads the whole table. Measured as it is, then with the index an
    // operator can add (deploy/README.md).
    for (name, before) in [
        (
            "flexmeasures token: cold, FlexMeasures' schema (50 000 users)",
            None,
        ),
        (
            "flexmeasures token: cold, with an index on roles_users (user_id)",
            Some("CREATE INDEX ON roles_users (user_id); ANALYZE roles_users;"),
        ),
    ] {
        if let Some(sql) = before {
            database.execute(&setup, sql);
        }
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter_batched(
                || {
                    next = next % FLEXMEASURES_USERS + 1;
                    let token = keys.issue(&format!("uq-bench-{next}"), now as f64);
                    format!("Bearer {token}").into_bytes()
                },
                |token| {
                    let authenticator = authenticator.clone();
                    async move {
                        let verified = authenticator.identify(&token).await.expect("valid");
                        assert_eq!(verified.path, VerificationPath::Verified, "a cache miss");
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    drop(authenticator);
    drop(database);
}

criterion_group!(
    benches,
    tokens,
    logins,
    flexmeasures_tokens,
    flexmeasures_cold
);
criterion_main!(benches);
