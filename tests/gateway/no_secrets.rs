//! A full run of the gateway binary — logins, tokens, a password change, a revocation,
//! forged credentials, cookies — with debug logging, then a search of everything it
//! wrote (log and audit) and everything the admin CLI printed on stderr for every
//! secret the run used. None may appear.

use super::support::{EchoBackend, ProcessConfig, TlsClient};
use super::users::{SIGNING_SECRET, TOKEN_SECRET, cli};

const FIRST_PASSWORD: &str = "first secret passphrase";
const SECOND_PASSWORD: &str = "second secret passphrase";
const WRONG_PASSWORD: &str = "wrong guess passphrase";
const COOKIE: &str = "session-cookie-value-8f3a";

async fn login(client: &TlsClient, password: &str) -> (u16, String) {
    let (status, json) = super::users::login_with(client, "ann@example.com", password).await;
    (
        status,
        json["auth_token"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_token_cookie_or_secret_reaches_logs_or_audit() {
    let backend = EchoBackend::start();
    let setup = ProcessConfig::write(&format!(
        r#"[log]
format = "json"
level = "debug"

[audit]
path = "audit.jsonl"

[directory]
database = "sqlite:portcullis.db"
bcrypt_cost = 4
change_poll = "50ms"

[tokens]
secrets = ["file:token.key"]

[identity_headers]
signing_secret = "file:signing.key"

[backends.echo]
address = "{backend}"

[[route]]
id = "api"
path_prefix = "/"
backend = "echo"
auth = "token"
"#,
        backend = backend.address,
    ));
    std::fs::write(setup.dir.path().join("signing.key"), SIGNING_SECRET).expect("key");
    let config = setup.path.clone();

    let mut cli_stderr = String::new();
    let mut admin = |args: &[&str], stdin: Option<&str>| {
        let output = cli(&config, args, stdin);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        cli_stderr.push_str(&String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    admin(&["account", "add", "Acme"], None);
    admin(
        &[
            "user",
            "add",
            "--email",
            "ann@example.com",
            "--account",
            "Acme",
            "--password-stdin",
        ],
        Some(&format!("{FIRST_PASSWORD}\n")),
    );

    let log_path = setup.dir.path().join("gateway.log");
    let gateway = setup.start();
    let client = TlsClient::new(setup.https, &setup.ca_pem);

    let (status, first_token) = login(&client, FIRST_PASSWORD).await;
    assert_eq!(status, 200);
    assert_eq!(login(&client, WRONG_PASSWORD).await.0, 401);
    for headers in [
        format!("Authorization: {first_token}\r\nCookie: session={COOKIE}\r\n"),
        format!("Authorization: Bearer {first_token}\r\n"),
        format!("Authorization: {first_token}x\r\n"),
    ] {
        client.get("/data", &headers).await;
    }
    // A token in the query string is not logged either (paths only, no queries).
    client
        .get(
            &format!("/data?auth_token={first_token}"),
            &format!("Authorization: {first_token}\r\n"),
        )
        .await;

    admin(
        &["user", "passwd", "ann@example.com", "--password-stdin"],
        Some(&format!("{SECOND_PASSWORD}\n")),
    );
    let issued = admin(&["token", "issue", "--user", "ann@example.com"], None);
    let issued = issued.trim().to_owned();
    let deadline = std::time::Instant::now() + super::support::DEADLINE;
    let second_token = loop {
        let (status, token) = login(&client, SECOND_PASSWORD).await;
        if status == 200 {
            break token;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new password never worked"
        );
    };
    client
        .get("/data", &format!("Authorization: {second_token}\r\n"))
        .await;
    client
        .get("/data", &format!("Authorization: {issued}\r\n"))
        .await;
    admin(&["token", "revoke", "--user", "ann@example.com"], None);
    client
        .get("/data", &format!("Authorization: {second_token}\r\n"))
        .await;
    drop(gateway);

    let log = std::fs::read_to_string(&log_path).expect("log");
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).expect("audit");
    assert!(
        log.contains("\"request\""),
        "the log has request lines:\n{log}"
    );
    assert!(
        audit.lines().count() >= 8,
        "every request was audited:\n{audit}"
    );
    let secrets = [
        ("first password", FIRST_PASSWORD),
        ("second password", SECOND_PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("first token", first_token.as_str()),
        ("second token", second_token.as_str()),
        ("issued token", issued.as_str()),
        ("token secret", TOKEN_SECRET),
        ("signing secret", SIGNING_SECRET),
        ("cookie", COOKIE),
    ];
    for (what, secret) in secrets {
        assert!(!secret.is_empty(), "{what} was produced");
        // Tokens are long; a recognizable piece of their signature is enough to leak.
        let needle = &secret[secret.len().saturating_sub(24)..];
        for (place, text) in [
            ("log", &log),
            ("audit", &audit),
            ("cli stderr", &cli_stderr),
        ] {
            let line = text
                .lines()
                .find(|line| line.contains(needle))
                .unwrap_or_default();
            assert!(
                !text.contains(needle),
                "the {what} appears in the {place}: {line}"
            );
        }
    }
}
