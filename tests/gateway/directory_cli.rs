//! The directory's admin CLI: flows and the clear errors it promises.

use std::path::{Path, PathBuf};

use super::users::{PASSWORD, PostgresDatabase, Stores, TOKEN_SECRET, cli, cli_ok, try_add_user};

/// A configuration with a directory (and nothing running).
fn configured(dir: &Path, stores: &Stores) -> PathBuf {
    let path = dir.join("portcullis.toml");
    let text = format!(
        "[listen]\nhttps = [\"127.0.0.1:1\"]\n\n[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n{}",
        stores.sections(dir)
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn failing(config: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let output = cli(config, args, stdin);
    assert!(!output.status.success(), "portcullis {args:?} should fail");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn add_user(config: &Path, email: &str, account: &str, password: &str) -> std::process::Output {
    try_add_user(config, email, account, &[], password)
}

fn flows_and_errors(config: &Path) {
    cli_ok(
        config,
        &[
            "account", "add", "Acme", "--role", "Prosumer", "--role", "MDC",
        ],
        None,
    );
    cli_ok(config, &["account", "add", "Beta"], None);

    // Unknown account: the nearest existing one is suggested.
    let (code, stderr) = failing(
        config,
        &[
            "user",
            "add",
            "--email",
            "a@b.c",
            "--account",
            "Acme2x",
            "--password-stdin",
        ],
        Some("whatever pass\n"),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown account `Acme2x`"), "{stderr}");
    let (_, stderr) = failing(config, &["account", "show", "Acm"], None);
    assert!(stderr.contains("did you mean `Acme`?"), "{stderr}");

    assert!(
        add_user(config, "Ann@Example.com", "Acme", PASSWORD)
            .status
            .success()
    );
    // Emails are unique without regard to case.
    let output = add_user(config, "ann@example.COM", "Beta", PASSWORD);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("a user with email `ann@example.com` already exists")
    );

    // Passwords over 72 bytes are refused with a reason, nothing is stored.
    let output = add_user(config, "long@example.com", "Acme", &"p".repeat(73));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("73 bytes") && stderr.contains("72"),
        "{stderr}"
    );
    let (_, stderr) = failing(config, &["user", "show", "long@example.com"], None);
    assert!(stderr.contains("no user with email"), "{stderr}");

    // Role typos suggest the nearest known role; --new-role accepts the name.
    let (_, stderr) = failing(
        config,
        &["user", "roles", "add", "ann@example.com", "admn"],
        None,
    );
    assert!(
        stderr.contains("did you mean `admin`?") && stderr.contains("--new-role"),
        "{stderr}"
    );
    let (_, stderr) = failing(
        config,
        &["account", "roles", "add", "Beta", "Prosumr"],
        None,
    );
    assert!(stderr.contains("did you mean `Prosumer`?"), "{stderr}");
    cli_ok(
        config,
        &["user", "roles", "add", "ann@example.com", "admin-reader"],
        None,
    );
    cli_ok(
        config,
        &[
            "user",
            "roles",
            "add",
            "ann@example.com",
            "MyService-subscriber",
        ],
        None,
    );
    cli_ok(config, &["account", "roles", "remove", "Acme", "MDC"], None);

    let shown = cli_ok(config, &["user", "show", "ann@example.com"], None);
    assert!(shown.contains("account        Acme"), "{shown}");
    assert!(
        shown.contains("roles          MyService-subscriber,admin-reader"),
        "{shown}"
    );
    assert!(shown.contains("account roles  Prosumer"), "{shown}");
    assert!(shown.contains("active         yes"), "{shown}");

    cli_ok(config, &["user", "deactivate", "ann@example.com"], None);
    let listed = cli_ok(config, &["user", "list", "--account", "Acme"], None);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("ann@example.com") && l.contains(" no ")),
        "{listed}"
    );
    let accounts = cli_ok(config, &["account", "list"], None);
    assert!(
        accounts
            .lines()
            .any(|l| l.contains("Acme") && l.contains("Prosumer")),
        "{accounts}"
    );

    // The password is never an argument, and a non-terminal stdin needs the flag.
    let (code, stderr) = failing(config, &["user", "passwd", "ann@example.com"], None);
    assert_eq!(code, 2);
    assert!(stderr.contains("--password-stdin"), "{stderr}");
    let (code, _) = failing(
        config,
        &[
            "user",
            "add",
            "--email",
            "x@y.z",
            "--account",
            "Acme",
            "--password",
            "secret",
        ],
        None,
    );
    assert_eq!(code, 2, "there is no --password option");
}

#[test]
fn the_admin_cli_manages_users_on_sqlite_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = configured(dir.path(), &Stores::sqlite());
    flows_and_errors(&config);
}

#[test]
fn the_admin_cli_manages_users_on_postgres_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = PostgresDatabase::create();
    let stores = Stores {
        postgres: Some(database.url.clone()),
        redis: None,
        extra: String::new(),
        change_poll: "50ms",
        secrets: vec![TOKEN_SECRET],
    };
    let config = configured(dir.path(), &stores);
    flows_and_errors(&config);
}

#[test]
fn admin_commands_need_a_directory_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        "[listen]\nhttps = [\"127.0.0.1:1\"]\n\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n",
    )
    .expect("write");
    let (code, stderr) = failing(&path, &["account", "list"], None);
    assert_eq!(code, 78);
    assert!(stderr.contains("no [directory] section"), "{stderr}");
}
