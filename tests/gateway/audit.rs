//! Every decision leaves one audit record, and no secret ever appears in one.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, EchoBackend, TestGateway};

/// The audit records written so far (none when the file does not exist yet).
fn written(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every audit line is JSON"))
        .collect()
}

/// The audit records written so far, once there are at least `count`.
pub async fn records(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let lines = written(path);
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "only {} audit records in {}",
            lines.len(),
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The decision records (not security events) so far, once there are `count`.
pub async fn decisions(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let mut seen = count;
    loop {
        let decisions: Vec<_> = records(path, seen)
            .await
            .into_iter()
            .filter(|record| record["kind"] == "decision")
            .collect();
        if decisions.len() >= count {
            return decisions;
        }
        seen += 1;
    }
}

fn gateway(backend: &EchoBackend) -> TestGateway {
    TestGateway::start(&format!(
        r#"[backends.echo]
address = "{}"

[[route]]
id = "private"
path_prefix = "/private"
backend = "echo"
auth = "token"

[[route]]
id = "api"
path_prefix = "/api"
backend = "echo"
auth = "public"
"#,
        backend.address
    ))
}

#[tokio::test]
async fn every_decision_is_audited_without_secrets() {
    let backend = EchoBackend::start();
    let gateway = gateway(&backend);
    let client = gateway.tls();
    let secrets = "Authorization: Bearer SECRET-TOKEN\r\nCookie: session=SECRET-COOKIE\r\n";
    let allowed = client
        .get("/api/%61?auth_token=SECRET-QUERY", secrets)
        .await;
    let refused = client.get("/private/x", secrets).await;
    let missing = client.get("/elsewhere", "").await;
    let ambiguous = client.get("/api/../private", "").await;
    assert_eq!(
        [
            allowed.status,
            refused.status,
            missing.status,
            ambiguous.status
        ],
        [200, 401, 404, 400]
    );

    let lines = records(&gateway.audit, 4).await;
    assert_eq!(lines.len(), 4, "one record per request: {lines:#?}");
    let expected = [
        (&allowed, "allowed", Some("api"), Some("/api/a"), 200),
        (
            &refused,
            "refused",
            Some("private"),
            Some("/private/x"),
            401,
        ),
        (&missing, "refused", None, Some("/elsewhere"), 404),
        (&ambiguous, "refused", None, None, 400),
    ];
    for (reply, decision, route, path, status) in expected {
        let id = reply.header("x-request-id").expect("request id");
        let record = lines
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no record for {id}: {lines:#?}"));
        assert_eq!(record["kind"], "decision");
        assert_eq!(record["decision"], decision, "{record}");
        assert_eq!(record["route"].as_str(), route, "{record}");
        assert_eq!(record["path"].as_str(), path, "{record}");
        assert_eq!(record["status"], status, "{record}");
        assert_eq!(record["method"], "GET");
        assert_eq!(record["client"], "127.0.0.1");
        assert!(
            record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
        assert!(record["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    }
    let refusal = lines
        .iter()
        .find(|r| r["status"] == 401)
        .expect("401 record");
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|r| r.contains("token")),
        "{refusal}"
    );

    let text = std::fs::read_to_string(&gateway.audit).expect("audit");
    for secret in [
        "SECRET-TOKEN",
        "SECRET-COOKIE",
        "SECRET-QUERY",
        "auth_token",
    ] {
        assert!(
            !text.contains(secret),
            "`{secret}` leaked into the audit log:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_audit_file_is_reopened_after_rotation() {
    let backend = EchoBackend::start();
    let gateway = gateway(&backend);
    let client = gateway.tls();
    client.get("/api/before", "").await;
    // A record on disk proves the writer runs and has claimed SIGUSR1.
    records(&gateway.audit, 1).await;

    let rotated = gateway.audit.with_extension("jsonl.1");
    std::fs::rename(&gateway.audit, &rotated).expect("rotate");
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Until the reopen, records still go to the rotated file; poll for the new one.
    let deadline = Instant::now() + DEADLINE;
    while !gateway.audit.exists() {
        assert!(Instant::now() < deadline, "audit log was not reopened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.get("/api/after", "").await;
    let after = records(&gateway.audit, 1).await;
    assert_eq!(after[0]["path"], "/api/after");
    let before = std::fs::read_to_string(&rotated).expect("rotated");
    assert!(before.contains("/api/before") && !before.contains("/api/after"));
}

/// The admin commands' security events in `paths`, file by file.
fn security_events(paths: &[&Path]) -> Vec<serde_json::Value> {
    paths
        .iter()
        .flat_map(|path| written(path))
        .filter(|record| record["kind"] == "security" && record["origin"] == "cli")
        .collect()
}

#[tokio::test]
async fn admin_commands_reach_the_audit_once_however_many_instances_run() {
    use crate::users::{PASSWORD, PostgresDatabase, Stores, cli_ok, gateway, seed};
    let backend = EchoBackend::start();
    let database = PostgresDatabase::create();
    let stores = Stores {
        postgres: Some(database.url.clone()),
        ..Stores::sqlite()
    };
    let first = gateway(&stores, backend.address);
    let second = gateway(&stores, backend.address);
    seed(&first.config);
    let token = cli_ok(
        &second.config,
        &["token", "issue", "--user", "ann@example.com"],
        None,
    );
    let token = token.trim();
    assert!(token.len() > 20, "{token}");
    for args in [
        &["token", "revoke", "--user", "ann@example.com"][..],
        &["session", "revoke", "--user", "ann@example.com"],
        &["user", "roles", "add", "ann@example.com", "admin-reader"],
        &["user", "deactivate", "ann@example.com"],
        &["user", "activate", "ann@example.com"],
    ] {
        cli_ok(&first.config, args, None);
    }
    cli_ok(
        &second.config,
        &["user", "passwd", "ann@example.com", "--password-stdin"],
        Some(&format!("{PASSWORD} changed\n")),
    );
    let expected = [
        "account-added",
        "user-added",
        "token-issued",
        "tokens-revoked",
        "sessions-revoked",
        "user-role-added",
        "user-deactivated",
        "user-activated",
        "password-changed",
    ];
    let files = [first.audit.as_path(), second.audit.as_path()];
    let deadline = Instant::now() + DEADLINE;
    while security_events(&files).len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "admin events relayed: {:?}",
            security_events(&files)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many more polls of both instances (change_poll is 50 ms) relay nothing twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut events = security_events(&files);
    events.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let mut sorted_names = names.clone();
    sorted_names.sort_unstable();
    let mut sorted_expected = expected.to_vec();
    sorted_expected.sort_unstable();
    assert_eq!(sorted_names, sorted_expected, "each event exactly once");
    let revoked = events
        .iter()
        .find(|e| e["event"] == "tokens-revoked")
        .expect("tokens-revoked");
    assert!(
        revoked["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ann@example.com") && d.contains("(id ")),
        "{revoked}"
    );
    assert!(
        revoked["operator"].as_str().is_some_and(|o| !o.is_empty()),
        "{revoked}"
    );
    assert!(revoked["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    for path in files {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            !text.contains(token) && !text.contains(PASSWORD),
            "no token or password in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn admin_commands_on_sqlite_reach_the_audit_and_no_ops_do_not() {
    use crate::users::{Stores, cli_ok, gateway, seed};
    let backend = EchoBackend::start();
    let gateway = gateway(&Stores::sqlite(), backend.address);
    seed(&gateway.config);
    // Nothing to lift, nothing changed: no event.
    cli_ok(&gateway.config, &["lockout", "lift", "--all"], None);
    cli_ok(
        &gateway.config,
        &["user", "2fa", "reset", "ann@example.com"],
        None,
    );
    let files = [gateway.audit.as_path()];
    let deadline = Instant::now() + DEADLINE;
    while security_events(&files).len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", security_events(&files));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = security_events(&files)
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["account-added", "user-added", "second-factor-reset"]
    );
}
