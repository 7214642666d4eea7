//! Policy files through the real gateway: the most specific rule decides, allow lists
//! and built-in roles, shadow mode, deny by default; and `check` reports policy
//! problems with file:line:col.

use std::path::Path;

use portcullis::config;

use super::support::{EchoBackend, GatewayProcess, Ports, ProcessConfig, TestGateway, config_text};
use super::users::{Stores, add_user, cli_ok, get_with, token_of};

fn gateway_with_example_policy(backend: std::net::SocketAddr) -> TestGateway {
    TestGateway::start_with(|ports: Ports, dir: &Path| {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/example.toml"),
            policies.join("example.toml"),
        )
        .expect("copy example");
        let body = format!(
            "{}\n[policies]\ndir = \"policies\"\n\n[backends.app]\naddress = \"{backend}\"\n",
            Stores::sqlite().sections(dir)
        );
        config_text(ports, dir, &body)
    })
}

async fn status(gateway: &TestGateway, method: &str, path: &str, token: &str) -> u16 {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    gateway.tls().raw(request.as_bytes()).await.status
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_policy_decides_by_account_role_and_rule() {
    let backend = EchoBackend::start();
    let gateway = gateway_with_example_policy(backend.address);
    cli_ok(&gateway.config, &["account", "add", "Acme"], None); // id 1
    cli_ok(
        &gateway.config,
        &[
            "account",
            "add",
            "Beta",
            "--role",
            "MyService-subscriber",
            "--new-role",
        ],
        None,
    ); // id 2
    add_user(
        &gateway.config,
        "ann@example.com",
        "Acme",
        &["account-admin"],
    );
    add_user(&gateway.config, "bob@example.com", "Acme", &[]);
    add_user(&gateway.config, "eve@example.com", "Beta", &[]);
    add_user(&gateway.config, "root@example.com", "Beta", &["admin"]);
    add_user(
        &gateway.config,
        "audit@example.com",
        "Beta",
        &["admin-reader"],
    );
    let ann = token_of(&gateway, "ann@example.com").await;
    let bob = token_of(&gateway, "bob@example.com").await;
    let eve = token_of(&gateway, "eve@example.com").await;
    let root = token_of(&gateway, "root@example.com").await;
    let auditor = token_of(&gateway, "audit@example.com").await;

    // Public, and deny by default.
    assert_eq!(get_with(&gateway, "/health", "none").await, 200);
    assert_eq!(status(&gateway, "GET", "/elsewhere", &ann).await, 404);
    assert_eq!(
        gateway.tls().get("/accounts/1/data/x", "").await.status,
        401
    );

    // Members read their account's data; others do not.
    assert_eq!(
        status(&gateway, "GET", "/accounts/1/data/x", &bob).await,
        200
    );
    assert_eq!(
        status(&gateway, "GET", "/accounts/1/data/x", &eve).await,
        403
    );
    assert_eq!(
        status(&gateway, "GET", "/accounts/2/data/x", &bob).await,
        403
    );
    // Writes need the account and the role (an AND group).
    assert_eq!(
        status(&gateway, "PATCH", "/accounts/1/data/x", &ann).await,
        200
    );
    assert_eq!(
        status(&gateway, "PATCH", "/accounts/1/data/x", &bob).await,
        403
    );
    // Built-in roles: admin everything, admin-reader reads only.
    assert_eq!(
        status(&gateway, "DELETE", "/accounts/1/data/x", &root).await,
        200
    );
    assert_eq!(status(&gateway, "POST", "/admin/users", &root).await, 200);
    assert_eq!(
        status(&gateway, "GET", "/accounts/1/data/x", &auditor).await,
        200
    );
    assert_eq!(
        status(&gateway, "PATCH", "/accounts/1/data/x", &auditor).await,
        403
    );
    assert_eq!(status(&gateway, "GET", "/admin/users", &ann).await, 403);
    // Shadow mode: a non-subscriber is let through, and the audit says so.
    assert_eq!(status(&gateway, "GET", "/reports/q1", &bob).await, 200);
    assert_eq!(status(&gateway, "GET", "/reports/q1", &eve).await, 200);

    let forwarded: Vec<String> = backend
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(
        !forwarded.iter().any(|r| r.contains("/accounts/2")),
        "{forwarded:?}"
    );
    // 5 logins and 15 requests.
    let records = super::audit::decisions(&gateway.audit, 20).await;
    let shadow: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["route"] == "reports").collect();
    assert_eq!(shadow.len(), 2);
    assert!(
        shadow[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("shadow: would refuse `read`")),
        "{:?}",
        shadow[0]
    );
    assert_eq!(shadow[1]["reason"], "account-role:MyService-subscriber");
    let refused = records
        .iter()
        .find(|r| r["status"] == 403)
        .expect("a refusal");
    assert_eq!(refused["route"], "account-data-read");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not allow")),
        "{refused:?}"
    );
}

#[test]
fn policy_problems_are_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("a.toml"),
        r#"[[route]]
id = "one"
match = "GET /items/{id}"
backend = "ap"
allow = ["acount:{id}"]

[[route]]
id = "two"
match = "GTE /x"
backend = "app"
allow = ["account:{owner}"]
"#,
    )
    .expect("write");
    std::fs::write(
        policies.join("b.toml"),
        r#"[[route]]
id = "three"
match = "GET /items/{item}"
backend = "app"
allow = ["every-logged-in-user"]

[[route]]
id = "four"
match = "GET|POST /items/{other}"
backend = "app"
allow = ["every-logged-in-user"]

[[route]]
id = "six"
match = "GET /six"
backend = "app"
allow = ["role:admn"]

[[route]]
id = "five"
match = "GET /five"
backend = "app"
allow = []
permision = "read"
"#,
    )
    .expect("write");
    let text = "[listen]\nhttps = [\"127.0.0.1:1\"]\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
                [policies]\ndir = \"policies\"\n[backends.app]\naddress = \"127.0.0.1:5000\"\n";
    let loaded = config::parse(&dir.path().join("portcullis.toml"), text.into(), Vec::new());
    assert!(loaded.config.is_none());
    let lines = loaded.report.one_line_each().join("\n");
    let a = policies.join("a.toml").display().to_string();
    let b = policies.join("b.toml").display().to_string();
    for expected in [
        format!("{a}:4:11: error: unknown backend `ap` (help: did you mean `app`?)"),
        format!("{a}:5:9: error: in `allow`: unknown principal `acount:{{id}}`"),
        format!("{a}:9:9: error: unknown method `GTE`"),
        format!("{a}:11:9: error: `account:{{owner}}` names `{{owner}}`, which is not a parameter"),
        format!("{b}:24:1: error: in [[route]]: unknown field `permision`"),
        format!(
            "{b}:17:9: warning: `role:admn`: no such built-in or common role (help: did you mean `admin`?"
        ),
        format!(
            "{b}:8:6: error: rules `four` and `three` both decide GET requests to the same path"
        ),
    ] {
        assert!(
            lines.contains(&expected),
            "missing `{expected}` in:\n{lines}"
        );
    }
    assert!(lines.contains("did you mean `permission`?"), "{lines}");
    assert!(lines.contains("did you mean `account`?"), "{lines}");
    assert!(lines.contains(&format!("`three` is at {b}:2:6")), "{lines}");
    assert_eq!(loaded.report.errors(), 6, "{lines}");
}

/// A configuration over the shipped policy directory (for the policy tools).
fn shipped_policies_config(dir: &Path) -> std::path::PathBuf {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let path = dir.join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttps = [\"127.0.0.1:1\"]\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
             {}\n[policies]\ndir = \"{}\"\n[backends.app]\naddress = \"127.0.0.1:5000\"\n[backends.flexmeasures]\naddress = \"127.0.0.1:5001\"\n",
            Stores::sqlite().sections(dir),
            policies.display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn the_shipped_policy_passes_its_test_cases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shipped_policies_config(dir.path());
    let output = super::users::cli(&config, &["policy", "test"], None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("28 case(s), 0 failed"), "{stdout}");

    // A wrong expectation fails the run and says what happened.
    let cases = dir.path().join("cases");
    std::fs::create_dir_all(&cases).expect("dir");
    std::fs::write(
        cases.join("wrong.toml"),
        "[[case]]\nname = \"wrong\"\nrequest = \"GET /accounts/1/data/x\"\nidentity = { user = 1, account = 2 }\nexpect = \"allow\"\n",
    )
    .expect("write");
    let output = super::users::cli(
        &config,
        &["policy", "test", "--cases", cases.to_str().expect("utf8")],
        None,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL wrong") && stdout.contains("got Deny by rule account-data-read"),
        "{stdout}"
    );
}

#[test]
fn explain_shows_the_rule_and_each_principal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shipped_policies_config(dir.path());
    let stdout = cli_ok(
        &config,
        &[
            "policy",
            "explain",
            "--account",
            "2",
            "--roles",
            "consultant",
            "PATCH",
            "/accounts/1/data/x",
        ],
        None,
    );
    assert!(stdout.contains("rule `account-data-write`"), "{stdout}");
    assert!(
        stdout.contains("path parameters: account=1, rest=x"),
        "{stdout}"
    );
    assert!(
        stdout.contains("allow [1]: account:{account} no and role:account-admin no"),
        "{stdout}"
    );
    assert!(stdout.contains("decision: deny (403)"), "{stdout}");
    assert!(
        stdout.contains(
            "rate limits: account-data (600/min per user and 3000/min per account), writes (60/min per user)"
        ),
        "{stdout}"
    );

    // With a user from the directory.
    cli_ok(&config, &["account", "add", "Acme"], None);
    add_user(&config, "ann@example.com", "Acme", &["account-admin"]);
    let stdout = cli_ok(
        &config,
        &[
            "policy",
            "explain",
            "--user",
            "ann@example.com",
            "PATCH",
            "/accounts/1/data/x",
        ],
        None,
    );
    assert!(
        stdout.contains("allow [1]: account:{account} yes and role:account-admin yes"),
        "{stdout}"
    );
    assert!(stdout.contains("decision: allow"), "{stdout}");
    let stdout = cli_ok(&config, &["policy", "explain", "GET", "/nowhere"], None);
    assert!(stdout.contains("no rule matches"), "{stdout}");
}

const STABLE: &str = r#"
[[route]]
id = "stable"
match = "GET /stable/{rest*}"
backend = "app"
allow = ["every-logged-in-user"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn policy_reloads_under_load_lose_no_request_and_keep_the_last_good_policy() {
    let backend = EchoBackend::start();
    let mut policies = std::path::PathBuf::new();
    let gateway = TestGateway::start_with(|ports: Ports, dir: &Path| {
        policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("dir");
        std::fs::write(
            policies.join("p.toml"),
            format!("{STABLE}\n[[route]]\nid = \"moving\"\nmatch = \"GET /moving\"\nbackend = \"app\"\nallow = []\n"),
        )
        .expect("write");
        let body = format!(
            "{}\n[policies]\ndir = \"policies\"\nreload_interval = \"50ms\"\n\n[backends.app]\naddress = \"{}\"\n",
            Stores::sqlite().sections(dir),
            backend.address
        );
        config_text(ports, dir, &body)
    });
    cli_ok(&gateway.config, &["account", "add", "Acme"], None);
    add_user(&gateway.config, "ann@example.com", "Acme", &[]);
    let token = token_of(&gateway, "ann@example.com").await;
    assert_eq!(get_with(&gateway, "/moving", &token).await, 403);

    // Load: bounded in count and time, on the one rule every version keeps.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, token, stop) = (gateway.tls(), token.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && statuses.len() < 2_000 {
                let reply = client
                    .get("/stable/x", &format!("Authorization: {token}\r\n"))
                    .await;
                statuses.push(reply.status);
            }
            statuses
        }));
    }
    let eventually = |path: &'static str, want: u16| {
        let (gateway, token) = (&gateway, token.clone());
        async move {
            let deadline = std::time::Instant::now() + super::support::DEADLINE;
            while get_with(gateway, path, &token).await != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{path} never became {want}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let write = |text: String| std::fs::write(policies.join("p.toml"), text).expect("write");
    let open_moving = format!(
        "{STABLE}\n[[route]]\nid = \"moving\"\nmatch = \"GET /moving\"\nbackend = \"app\"\nallow = [\"every-logged-in-user\"]\n"
    );

    write(open_moving.clone());
    eventually("/moving", 200).await;
    // A broken edit: refused, the last good policy stays.
    write(format!(
        "{STABLE}\n[[route]]\nid = \"moving\"\nmatch = \"GET /moving\"\nbackend = \"nope\"\nallow = []\n"
    ));
    let deadline = std::time::Instant::now() + super::support::DEADLINE;
    while super::support::metric(
        &gateway,
        "portcullis_policy_reloads_total{result=\"failure\"}",
    )
    .await
        != Some(1.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken policy was never looked at"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_with(&gateway, "/moving", &token).await,
        200,
        "last good policy kept"
    );
    // Fixed again: the new version applies.
    write(format!(
        "{STABLE}\n[[route]]\nid = \"moving\"\nmatch = \"GET /moving\"\nbackend = \"app\"\nallow = []\nmode = \"enforce\"\n"
    ));
    eventually("/moving", 403).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        let statuses = task.await.expect("load task");
        assert!(
            statuses.iter().all(|s| *s == 200),
            "a request failed during reloads: {statuses:?}"
        );
        total += statuses.len();
    }
    assert!(total > 0);
    eprintln!("{total} requests during 3 reloads, all 200");
    let successes = super::support::metric(
        &gateway,
        "portcullis_policy_reloads_total{result=\"success\"}",
    )
    .await
    .expect("metric");
    assert!(
        successes >= 3.0,
        "initial load and two reloads: {successes}"
    );
    // The audit writer is asynchronous: wait for both events.
    let deadline = std::time::Instant::now() + super::support::DEADLINE;
    loop {
        let records = super::audit::records(&gateway.audit, 1).await;
        let events: Vec<&str> = records
            .iter()
            .filter(|r| r["kind"] == "security")
            .filter_map(|r| r["event"].as_str())
            .collect();
        if events.contains(&"policy-reloaded") && events.contains(&"policy-reload-failed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn diff_lists_who_gains_and_loses_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shipped_policies_config(dir.path());
    let new = dir.path().join("new");
    std::fs::create_dir_all(&new).expect("dir");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/example.toml"),
    )
    .expect("example");
    std::fs::write(
        new.join("example.toml"),
        example.replace(
            "allow = [\"account:{account}\"]",
            "allow = [\"account:{account}\", \"role:consultant\"]",
        ),
    )
    .expect("write");
    // The FlexMeasures policy stays as it is.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/flexmeasures.toml"),
        new.join("flexmeasures.toml"),
    )
    .expect("copy");
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let stdout = cli_ok(
        &config,
        &[
            "policy",
            "diff",
            old.to_str().expect("utf8"),
            new.to_str().expect("utf8"),
        ],
        None,
    );
    assert_eq!(stdout.trim(), "+ account-data-read: role:consultant");
}

const RESOURCES: &str = r#"
[resources.asset]
query = "SELECT account_id, consultancy_id FROM assets WHERE id = $1"
ttl = "1h"

[resources.hidden-asset]
query = "SELECT account_id, consultancy_id FROM assets WHERE id = $1"
missing = "forbidden"

[[route]]
id = "asset-read"
match = "GET /assets/{id}"
backend = "app"
resource = "asset:{id}"
allow = ["account:{owner}", ["role:consultant", "account:{consultancy}"]]

[resources.broken]
query = "SELECT account_id, consultancy_id FROM no_such_table WHERE id = $1"

[[route]]
id = "broken"
match = "GET /broken/{id}"
backend = "app"
resource = "broken:{id}"
allow = ["account:{owner}"]

[[route]]
id = "asset-delete"
match = "DELETE /assets/{id}"
backend = "app"
resource = "hidden-asset:{id}"
allow = ["account:{owner}"]
"#;

async fn sqlite(database: &Path, statements: &[&str]) {
    use sqlx::Connection as _;
    let url = format!("sqlite:{}", database.display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect(statement);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_owners_decide_through_a_cached_lookup() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start_with(|ports: Ports, dir: &Path| {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("dir");
        std::fs::write(policies.join("assets.toml"), RESOURCES).expect("write");
        let body = format!(
            "{}\n[policies]\ndir = \"policies\"\n\n[backends.app]\naddress = \"{}\"\n",
            Stores::sqlite().sections(dir),
            backend.address
        );
        config_text(ports, dir, &body)
    });
    let database = gateway.config.parent().expect("dir").join("portcullis.db");
    sqlite(
        &database,
        &[
            "CREATE TABLE assets (id INTEGER PRIMARY KEY, account_id BIGINT, consultancy_id BIGINT)",
            "INSERT INTO assets VALUES (10, 1, 2), (11, 3, NULL)",
        ],
    )
    .await;
    for account in ["Acme", "Beta", "Gamma"] {
        cli_ok(&gateway.config, &["account", "add", account], None);
    }
    add_user(&gateway.config, "ann@example.com", "Acme", &[]);
    add_user(&gateway.config, "bob@example.com", "Beta", &["consultant"]);
    let ann = token_of(&gateway, "ann@example.com").await;
    let bob = token_of(&gateway, "bob@example.com").await;

    assert_eq!(
        status(&gateway, "GET", "/assets/10", &ann).await,
        200,
        "owner"
    );
    assert_eq!(
        status(&gateway, "GET", "/assets/11", &ann).await,
        403,
        "not the owner"
    );
    assert_eq!(
        status(&gateway, "GET", "/assets/10", &bob).await,
        200,
        "consultant of the owner"
    );
    assert_eq!(
        status(&gateway, "GET", "/assets/11", &bob).await,
        403,
        "no consultancy"
    );
    assert_eq!(
        status(&gateway, "GET", "/assets/99", &ann).await,
        404,
        "missing: not-found"
    );
    assert_eq!(
        status(&gateway, "DELETE", "/assets/99", &ann).await,
        403,
        "missing: forbidden"
    );
    assert_eq!(status(&gateway, "DELETE", "/assets/10", &ann).await, 200);
    // SECURITY: a lookup that fails refuses (503), it never guesses.
    let reply = gateway
        .tls()
        .get("/broken/10", &format!("Authorization: {ann}\r\n"))
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    assert!(!reply.text().contains("no_such_table"), "{}", reply.text());

    // Cached for the ttl: a new owner is not seen yet.
    sqlite(
        &database,
        &["UPDATE assets SET account_id = 1 WHERE id = 11"],
    )
    .await;
    assert_eq!(
        status(&gateway, "GET", "/assets/11", &ann).await,
        403,
        "cached owner"
    );
    // The other resource over the same table has its own cache.
    assert_eq!(status(&gateway, "DELETE", "/assets/11", &ann).await, 200);
    let forwarded = backend.received().len();
    assert_eq!(forwarded, 4);
}

#[test]
fn resource_problems_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("r.toml"),
        r#"[resources.asset]
query = "SELECT 1, 2"

[resources.sensor]
query = "SELECT a, b FROM s WHERE id = $1"
missing = "gone"

[[route]]
id = "one"
match = "GET /assets/{id}"
backend = "app"
resource = "aset:{id}"
allow = ["account:{owner}"]

[[route]]
id = "two"
match = "GET /x/{id}"
backend = "app"
allow = ["account:{owner}"]
"#,
    )
    .expect("write");
    let text = "[listen]\nhttps = [\"127.0.0.1:1\"]\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
                [policies]\ndir = \"policies\"\n[backends.app]\naddress = \"127.0.0.1:5000\"\n";
    let loaded = config::parse(&dir.path().join("portcullis.toml"), text.into(), Vec::new());
    let lines = loaded.report.one_line_each().join("\n");
    let r = policies.join("r.toml").display().to_string();
    for expected in [
        format!("{r}:1:2: error: resources are looked up in the directory's database"),
        format!("{r}:2:9: error: the query must use `$1`"),
        format!("{r}:6:11: error: unknown `missing` answer `gone`"),
        format!("{r}:12:12: error: unknown resource `aset`"),
        format!("{r}:19:9: error: `account:{{owner}}` names `{{owner}}`, which is not a parameter"),
    ] {
        assert!(
            lines.contains(&expected),
            "missing `{expected}` in:\n{lines}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_lookups_work_on_postgres_with_number_and_text_keys() {
    use sqlx::Connection as _;
    let backend = EchoBackend::start();
    let database = super::users::PostgresDatabase::create();
    let mut connection = sqlx::PgConnection::connect(&database.url)
        .await
        .expect("pg");
    for statement in [
        "CREATE TABLE sensors (id BIGINT PRIMARY KEY, account_id BIGINT, consultancy_id BIGINT)",
        "CREATE TABLE sites (slug TEXT PRIMARY KEY, account_id BIGINT)",
        "INSERT INTO sensors VALUES (5, 1, NULL)",
        "INSERT INTO sites VALUES ('north', 1)",
    ] {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect(statement);
    }
    let stores = Stores {
        postgres: Some(database.url.clone()),
        ..Stores::sqlite()
    };
    let gateway = TestGateway::start_with(|ports: Ports, dir: &Path| {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("dir");
        std::fs::write(
            policies.join("p.toml"),
            r#"
[resources.sensor]
query = "SELECT account_id, consultancy_id FROM sensors WHERE id = $1"

[resources.site]
query = "SELECT account_id, NULL::bigint FROM sites WHERE slug = $1"

[[route]]
id = "sensor"
match = "GET /sensors/{id}"
backend = "app"
resource = "sensor:{id}"
allow = ["account:{owner}"]

[[route]]
id = "site"
match = "GET /sites/{slug}"
backend = "app"
resource = "site:{slug}"
allow = ["account:{owner}"]
"#,
        )
        .expect("write");
        let body = format!(
            "{}\n[policies]\ndir = \"policies\"\n\n[backends.app]\naddress = \"{}\"\n",
            stores.sections(dir),
            backend.address
        );
        config_text(ports, dir, &body)
    });
    cli_ok(&gateway.config, &["account", "add", "Acme"], None);
    add_user(&gateway.config, "ann@example.com", "Acme", &[]);
    let ann = token_of(&gateway, "ann@example.com").await;
    assert_eq!(status(&gateway, "GET", "/sensors/5", &ann).await, 200);
    assert_eq!(status(&gateway, "GET", "/sensors/6", &ann).await, 404);
    assert_eq!(status(&gateway, "GET", "/sites/north", &ann).await, 200);
    assert_eq!(status(&gateway, "GET", "/sites/south", &ann).await, 404);
}

/// Whether a process catches `signal`: its bit in `SigCgt` of /proc/PROCESS/status
/// (`self` for this one).
fn catches(process: &str, signal: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).expect("status");
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).expect("SigCgt"))
        .expect("SigCgt line");
    mask & (1 << (signal - 1)) != 0
}

#[tokio::test]
async fn sighup_without_policy_files_reloads_nothing_and_leaves_the_gateway_serving() {
    // `systemctl reload` sends SIGHUP whatever the configuration; its default action
    // would end a gateway whose routes come from [[route]] tables.
    const SIGHUP: u32 = 1;
    assert!(
        !catches("self", SIGHUP),
        "this test process must not catch SIGHUP before the gateway"
    );
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&format!(
        "[backends.echo]\naddress = \"{}\"\n\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\nbackend = \"echo\"\nauth = \"public\"\n",
        backend.address
    ));
    let client = gateway.tls();
    assert_eq!(client.get("/before", "").await.status, 200);
    let deadline = std::time::Instant::now() + super::support::DEADLINE;
    while !catches("self", SIGHUP) {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never claimed SIGHUP; its default action would end the process"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Still this process, still serving, the same routes.
    assert_eq!(client.get("/after", "").await.status, 200);
    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/before", "/after"]);
}

#[test]
fn sighup_and_sigusr1_while_the_gateway_starts_do_not_end_it() {
    // `systemctl start` returns once the binary runs (Type=exec); a `systemctl reload`
    // or a log rotation right after must not find the signal's default action.
    const SIGHUP: u32 = 1;
    const SIGUSR1: u32 = 10;
    let backend = EchoBackend::start();
    let setup = ProcessConfig::write(&format!(
        "[backends.echo]\naddress = \"{}\"\n\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\nbackend = \"echo\"\nauth = \"public\"\n",
        backend.address
    ));
    // The configuration comes through a FIFO: the process waits in its first read
    // until the test writes, so the signals surely arrive before it serves.
    let fifo = setup.dir.path().join("arriving.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let mut gateway = GatewayProcess::spawn(&fifo, &setup.dir.path().join("gateway.log"));
    let pid = gateway.pid().to_string();
    let deadline = std::time::Instant::now() + super::support::DEADLINE;
    while !(catches(&pid, SIGHUP) && catches(&pid, SIGUSR1)) {
        assert!(gateway.running(), "the gateway ended while starting");
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP and SIGUSR1 are not claimed before the configuration is read"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for signal in ["-HUP", "-USR1"] {
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    }
    std::fs::write(&fifo, std::fs::read(&setup.path).expect("config")).expect("write fifo");
    super::support::wait_until_listening(setup.https);
    assert!(
        gateway.running(),
        "a signal sent while starting ended the gateway"
    );
}
