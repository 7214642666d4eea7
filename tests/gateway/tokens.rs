//! Users, login and tokens through the real gateway: SQLite by default, PostgreSQL
//! and Redis for the multi-instance cases.

use portcullis::secret::Secret;
use portcullis::token::{MAX_TOKEN_LENGTH, TokenKeys};

use super::support::{ClosedPort, EchoBackend, admin_get, metric};
use super::users::{
    PASSWORD, PostgresDatabase, SIGNING_SECRET, Stores, TOKEN_SECRET, cli_ok, eventually_status,
    gateway, get_with, login, redis_url, seed, token,
};

fn keys() -> TokenKeys {
    TokenKeys::new(
        &[Secret::new(TOKEN_SECRET.as_bytes().to_vec())],
        std::time::Duration::from_secs(21_600),
        std::time::Duration::from_secs(30),
    )
    .expect("keys")
}

fn now() -> i64 {
    portcullis::directory::now()
}

#[tokio::test(flavor = "multi_thread")]
async fn login_issues_a_token_that_opens_token_routes_with_identity_headers() {
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);

    let (status, json) = login(&gateway, "ANN@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{json}");
    let token = json["auth_token"].as_str().expect("auth_token");
    assert_eq!(json["user_id"], 1);

    // Raw (as FlexMeasures clients send it) and as a bearer token.
    for authorization in [token.to_owned(), format!("Bearer {token}")] {
        let reply = gateway
            .tls()
            .get(
                "/data",
                &format!("Authorization: {authorization}\r\nX-Portcullis-Roles: admin\r\n"),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    // The second request with the same token took the hot path.
    let check = |result: &str| format!("portcullis_token_checks_total{{result=\"{result}\"}}");
    assert_eq!(metric(&gateway, &check("verified")).await, Some(1.0));
    assert_eq!(metric(&gateway, &check("cached")).await, Some(1.0));
    assert_eq!(
        metric(&gateway, "portcullis_logins_total{result=\"issued\"}").await,
        Some(1.0)
    );
    // Audited with the verified ids; the token and password appear nowhere.
    // (The admin commands that made the user are security events: skipped.)
    let records = super::audit::decisions(&gateway.audit, 3).await;
    let login_record = &records[0];
    assert_eq!(login_record["decision"], "token-issued");
    assert_eq!(login_record["user"], "1");
    for record in &records[1..] {
        assert_eq!(record["decision"], "allowed");
        assert_eq!(record["user"], "1");
        assert_eq!(record["account"], "1");
    }
    let text = std::fs::read_to_string(&gateway.audit).expect("audit");
    assert!(!text.contains(token) && !text.contains(PASSWORD));
    let received = backend.received();
    assert_eq!(received.len(), 2);
    for request in received {
        assert_eq!(request.header("x-portcullis-user-id").as_deref(), Some("1"));
        assert_eq!(
            request.header("x-portcullis-account-id").as_deref(),
            Some("1")
        );
        // The client's spoofed role is gone; the verified ones are set.
        assert_eq!(
            request.header("x-portcullis-roles").as_deref(),
            Some("account-admin")
        );
        assert_eq!(
            request.header("x-portcullis-account-roles").as_deref(),
            Some("Prosumer")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_forged_and_tampered_tokens_get_401_with_a_challenge() {
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    let token = token(&gateway).await;

    let missing = gateway.tls().get("/data", "").await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate").as_deref(),
        Some(r#"Bearer realm="portcullis""#)
    );

    // SECURITY: the valid token is in the cache from here on; a hit must need the
    // exact token, so each variant below still goes through the full check.
    assert_eq!(get_with(&gateway, "/data", &token).await, 200);

    let parts: Vec<&str> = token.split('.').collect();
    let other_user = keys().issue(2, "$5$x$y", now());
    let stranger = TokenKeys::new(
        &[Secret::new(
            b"another secret that is 32+ bytes long".to_vec(),
        )],
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(1),
    )
    .expect("keys")
    .issue(1, parts[0], now());
    let forged = [
        format!("{}x.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}x.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}x", parts[0], parts[1], parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        stranger,
        // Signed with the right key, but for a user that does not exist.
        other_user,
        "x".repeat(3000),
    ];
    for forged in forged {
        let reply = gateway
            .tls()
            .get("/data", &format!("Authorization: {forged}\r\n"))
            .await;
        assert_eq!(reply.status, 401, "{forged:.40}");
        assert_eq!(
            reply.header("www-authenticate").as_deref(),
            Some(r#"Bearer realm="portcullis", error="invalid_token""#)
        );
        assert!(!reply.text().contains(&forged[..20.min(forged.len())]));
    }
    // Two Authorization headers: refused, even if one is valid.
    let reply = gateway
        .tls()
        .get(
            "/data",
            &format!("Authorization: {token}\r\nAuthorization: Bearer other\r\n"),
        )
        .await;
    assert_eq!(reply.status, 401);
    // Public routes do not look at credentials at all.
    assert_eq!(get_with(&gateway, "/public", "garbage").await, 200);
    assert_eq!(
        backend.received().len(),
        2,
        "only the valid token's and the public request got through"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_future_tokens_are_refused() {
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    let valid = token(&gateway).await;
    let claims = keys().decode(&valid, now()).expect("own token decodes");
    let expired = keys().issue(1, &claims.password_crypt, now() - 21_601);
    let almost = keys().issue(1, &claims.password_crypt, now() - 21_500);
    let future = keys().issue(1, &claims.password_crypt, now() + 120);
    assert_eq!(get_with(&gateway, "/data", &expired).await, 401);
    assert_eq!(get_with(&gateway, "/data", &future).await, 401);
    assert_eq!(get_with(&gateway, "/data", &almost).await, 200);
}

/// `signed` (`payload.timestamp`) with a tag made by `algorithm` under `key`.
fn signed_with(algorithm: ring::hmac::Algorithm, key: &[u8], signed: &str) -> String {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(algorithm, key), signed.as_bytes());
    format!("{signed}.{}", b64(tag.as_ref()))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_wrong_algorithm_tokens_are_refused() {
    use ring::hmac::{HMAC_SHA1_FOR_LEGACY_USE_ONLY, HMAC_SHA256, HMAC_SHA384, HMAC_SHA512};
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    let token = token(&gateway).await;
    let (signed, _) = token.rsplit_once('.').expect("signature");
    let (payload, timestamp) = signed.split_once('.').expect("timestamp");
    // The key the gateway derives from its secret (DESIGN §3), as someone who
    // learnt it would use it: every refusal below is the algorithm's or the length's.
    let derived = ring::hmac::sign(
        &ring::hmac::Key::new(HMAC_SHA256, TOKEN_SECRET.as_bytes()),
        b"portcullis native token v1",
    );
    let key = derived.as_ref();
    assert_eq!(
        get_with(&gateway, "/data", &signed_with(HMAC_SHA256, key, signed)).await,
        200,
        "re-signing with the gateway's own algorithm and key is accepted"
    );

    // The same claims with JSON whitespace: validly signed at any length.
    let json = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("payload")
    };
    let padded = |spaces: usize| {
        let mut padded = json.clone();
        padded.splice(1..1, std::iter::repeat_n(b' ', spaces));
        signed_with(HMAC_SHA256, key, &format!("{}.{timestamp}", b64(&padded)))
    };
    let within = padded(300);
    assert!(within.len() <= MAX_TOKEN_LENGTH);
    assert_eq!(get_with(&gateway, "/data", &within).await, 200);
    let over = (300..)
        .map(padded)
        .find(|token| token.len() > MAX_TOKEN_LENGTH)
        .expect("a token over the limit");
    assert!(over.len() <= MAX_TOKEN_LENGTH + 2, "just over the limit");
    assert_eq!(get_with(&gateway, "/data", &over).await, 401);
    let huge = gateway
        .tls()
        .get("/data", &format!("Authorization: {}\r\n", padded(60_000)))
        .await;
    assert!(
        (400..500).contains(&huge.status),
        "a 60 kB token: {}",
        huge.status
    );

    let jwt_header = |alg: &str| b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
    let jwt_claims = b64(&json);
    let flask_security = portcullis::token::FlaskSecurityKeys::new(
        &[Secret::new(TOKEN_SECRET.as_bytes().to_vec())],
        portcullis::token::flask_security::DEFAULT_SALT,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(1),
    )
    .expect("keys");
    let wrong = [
        (
            "HMAC-SHA1 with the derived key",
            signed_with(HMAC_SHA1_FOR_LEGACY_USE_ONLY, key, signed),
        ),
        (
            "HMAC-SHA384 with the derived key",
            signed_with(HMAC_SHA384, key, signed),
        ),
        (
            "HMAC-SHA512 with the derived key",
            signed_with(HMAC_SHA512, key, signed),
        ),
        (
            "HMAC-SHA256 with the secret itself",
            signed_with(HMAC_SHA256, TOKEN_SECRET.as_bytes(), signed),
        ),
        ("no signature", format!("{signed}.")),
        (
            "JWT alg none",
            format!("{}.{jwt_claims}.", jwt_header("none")),
        ),
        (
            "JWT HS256 with the secret",
            signed_with(
                HMAC_SHA256,
                TOKEN_SECRET.as_bytes(),
                &format!("{}.{jwt_claims}", jwt_header("HS256")),
            ),
        ),
        (
            "the FlexMeasures format with the same secret",
            flask_security.issue("1", now() as f64),
        ),
    ];
    for (name, forged) in wrong {
        assert_eq!(get_with(&gateway, "/data", &forged).await, 401, "{name}");
    }
    assert_eq!(
        backend.received().len(),
        2,
        "only the two validly signed tokens within the limit got through"
    );
    assert_eq!(
        metric(
            &gateway,
            "portcullis_token_checks_total{result=\"refused\"}"
        )
        .await,
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_unknown_emails_and_inactive_users_get_one_uniform_401() {
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    cli_ok(&gateway.config, &["account", "add", "Other"], None);
    cli_ok(
        &gateway.config,
        &[
            "user",
            "add",
            "--email",
            "off@example.com",
            "--account",
            "Other",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    cli_ok(
        &gateway.config,
        &["user", "deactivate", "off@example.com"],
        None,
    );

    let (status, wrong) = login(&gateway, "ann@example.com", "wrong password!").await;
    assert_eq!(status, 401);
    let (status, unknown) = login(&gateway, "nobody@example.com", PASSWORD).await;
    assert_eq!(status, 401);
    let (status, inactive) = login(&gateway, "off@example.com", PASSWORD).await;
    assert_eq!(status, 401);
    let (status, long) = login(
        &gateway,
        "ann@example.com",
        &format!("{PASSWORD}{}", "x".repeat(80)),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, inactive);
    assert_eq!(wrong, long);
    // Nor by time: every attempt cost one bcrypt run (the unknown email and the
    // over-long password against a dummy hash of the same cost). The times
    // themselves are measured by the `login` group in `benches/tokens.rs`.
    let checks = "portcullis_password_checks_total";
    assert_eq!(metric(&gateway, checks).await, Some(4.0));
    for email in [
        "nobody@example.com",
        "nobody@example.org",
        "ANN@example.com",
    ] {
        let (status, _) = login(&gateway, email, "wrong password!").await;
        assert_eq!(status, 401);
    }
    assert_eq!(metric(&gateway, checks).await, Some(7.0));

    let tls = gateway.tls();
    let malformed = tls
        .post("/api/requestAuthToken", "application/json", "{\"email\": 1")
        .await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.text().contains("email"), "says what to send");
    let get = tls.get("/api/requestAuthToken", "").await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow").as_deref(), Some("POST"));
    assert!(
        backend.received().is_empty(),
        "login never reaches the backend"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn password_change_deactivation_and_revocation_take_effect_at_once() {
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);

    // Revocation: the token stops working; a new login works again.
    let first = token(&gateway).await;
    assert_eq!(get_with(&gateway, "/data", &first).await, 200);
    cli_ok(
        &gateway.config,
        &["token", "revoke", "--user", "ann@example.com"],
        None,
    );
    eventually_status(&gateway, &first, 401).await;
    let second = token(&gateway).await;
    assert_eq!(
        get_with(&gateway, "/data", &second).await,
        200,
        "new tokens work after a revocation"
    );

    // Password change: earlier tokens stop working, the old password too.
    cli_ok(
        &gateway.config,
        &["user", "passwd", "ann@example.com", "--password-stdin"],
        Some("a brand new passphrase\n"),
    );
    eventually_status(&gateway, &second, 401).await;
    assert_eq!(login(&gateway, "ann@example.com", PASSWORD).await.0, 401);
    let (status, json) = login(&gateway, "ann@example.com", "a brand new passphrase").await;
    assert_eq!(status, 200);
    let third = json["auth_token"].as_str().expect("token").to_owned();
    assert_eq!(get_with(&gateway, "/data", &third).await, 200);

    // Deactivation.
    cli_ok(
        &gateway.config,
        &["user", "deactivate", "ann@example.com"],
        None,
    );
    eventually_status(&gateway, &third, 401).await;

    // A token issued by the CLI for a service account works like a login's.
    cli_ok(
        &gateway.config,
        &["user", "activate", "ann@example.com"],
        None,
    );
    let issued = cli_ok(
        &gateway.config,
        &["token", "issue", "--user", "ann@example.com"],
        None,
    );
    eventually_status(&gateway, issued.trim(), 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn role_changes_reach_the_identity_headers() {
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    let token = token(&gateway).await;
    assert_eq!(get_with(&gateway, "/data", &token).await, 200);
    cli_ok(
        &gateway.config,
        &["user", "roles", "add", "ann@example.com", "consultant"],
        None,
    );
    cli_ok(
        &gateway.config,
        &["account", "roles", "add", "Acme", "MyService-subscriber"],
        None,
    );
    let deadline = std::time::Instant::now() + super::support::DEADLINE;
    loop {
        assert_eq!(get_with(&gateway, "/data", &token).await, 200);
        let last = backend.received().pop().expect("received");
        if last.header("x-portcullis-roles").as_deref() == Some("account-admin,consultant")
            && last.header("x-portcullis-account-roles").as_deref()
                == Some("MyService-subscriber,Prosumer")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "roles never updated");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_carry_a_verifiable_signature_when_configured() {
    let backend = EchoBackend::start();
    let secret = SIGNING_SECRET;
    let mut stores = Stores::sqlite();
    stores.extra = "\n[identity_headers]\nsigning_secret = \"file:signing.key\"\n".into();
    let gateway = gateway(&stores, backend.address);
    seed(&gateway.config);
    let token = token(&gateway).await;
    assert_eq!(get_with(&gateway, "/data?x=1", &token).await, 200);
    let request = backend.only();
    let signature = request.header("x-portcullis-signature").expect("signed");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=…,v1=…");
    let message = [
        "v1",
        t,
        &request.header("x-request-id").expect("request id"),
        "GET",
        "/data?x=1",
        "1",
        "1",
        "account-admin",
        "Prosumer",
    ]
    .join("\n");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let expected: String = ring::hmac::sign(&key, message.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_fails_closed_with_503() {
    let backend = EchoBackend::start();
    let closed = ClosedPort::new();
    let stores = Stores {
        postgres: Some(format!("postgres://postgres@{}/portcullis", closed.address)),
        redis: None,
        extra: String::new(),
        change_poll: "50ms",
        secrets: vec![TOKEN_SECRET],
    };
    let gateway = gateway(&stores, backend.address);
    // Correctly signed, so only the directory can decide; it cannot answer.
    let token = keys().issue(1, "$5$x$y", now());
    let reply = gateway
        .tls()
        .get("/data", &format!("Authorization: {token}\r\n"))
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    assert!(
        !reply.text().contains("postgres"),
        "no internals: {}",
        reply.text()
    );
    let (status, _) = login(&gateway, "ann@example.com", PASSWORD).await;
    assert_eq!(status, 503);
    let ready = admin_get(
        &gateway,
        "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ready.status, 503);
    assert!(backend.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_fails_token_checks_closed() {
    let backend = EchoBackend::start();
    let closed = ClosedPort::new();
    let stores = Stores {
        postgres: None,
        redis: Some((format!("redis://{}", closed.address), "unreachable".into())),
        extra: String::new(),
        change_poll: "50ms",
        secrets: vec![TOKEN_SECRET],
    };
    let gateway = gateway(&stores, backend.address);
    seed(&gateway.config);
    // Correctly signed for an existing user: only Redis (shared revocations) is missing.
    let token = keys().issue(1, "$5$x$y", now());
    assert_eq!(get_with(&gateway, "/data", &token).await, 503);
    assert!(backend.received().is_empty());
    // The CLI saves a revocation without Redis and says other instances learn it later.
    let output = super::users::cli(
        &gateway.config,
        &["token", "revoke", "--user", "ann@example.com"],
        None,
    );
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("change_poll"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_a_second_instance_through_postgres_and_redis() {
    let backend = EchoBackend::start();
    let database = PostgresDatabase::create();
    let stores = Stores {
        postgres: Some(database.url.clone()),
        redis: Some((
            redis_url(),
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )),
        extra: String::new(),
        // Longer than the deadline: only Redis can bring the revocation in time.
        change_poll: "60s",
        secrets: vec![TOKEN_SECRET],
    };
    let first = gateway(&stores, backend.address);
    let second = gateway(&stores, backend.address);
    seed(&first.config);
    let token = token(&first).await;
    eventually_status(&first, &token, 200).await;
    eventually_status(&second, &token, 200).await;

    cli_ok(
        &first.config,
        &["token", "revoke", "--user", "ann@example.com"],
        None,
    );
    let on_first = eventually_status(&first, &token, 401).await;
    let on_second = eventually_status(&second, &token, 401).await;
    eprintln!("revocation seen after {on_first:?} (first) and {on_second:?} (second)");
    // A fresh token from the second instance works on the first.
    let fresh = super::users::token(&second).await;
    eventually_status(&first, &fresh, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_secrets_keep_old_tokens_and_sign_new_ones_with_the_first() {
    const NEW_SECRET: &str = "the rotated-in token secret, 32+ bytes";
    let backend = EchoBackend::start();
    let database = PostgresDatabase::create();
    let shared = |secrets: Vec<&'static str>| Stores {
        postgres: Some(database.url.clone()),
        redis: None,
        extra: String::new(),
        change_poll: "50ms",
        secrets,
    };
    let before = gateway(&shared(vec![TOKEN_SECRET]), backend.address);
    let rotated = gateway(&shared(vec![NEW_SECRET, TOKEN_SECRET]), backend.address);
    let after = gateway(&shared(vec![NEW_SECRET]), backend.address);
    seed(&before.config);

    let old = token(&before).await;
    assert_eq!(
        get_with(&rotated, "/data", &old).await,
        200,
        "old tokens survive rotation"
    );
    assert_eq!(
        get_with(&after, "/data", &old).await,
        401,
        "until the old secret is dropped"
    );

    let new = super::users::token(&rotated).await;
    assert_eq!(
        get_with(&after, "/data", &new).await,
        200,
        "the first secret signs"
    );
    assert_eq!(get_with(&before, "/data", &new).await, 401);
}
