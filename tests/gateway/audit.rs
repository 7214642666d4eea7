//! Every decision leaves one audit record, and no secret ever appears in one.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, EchoBackend, TestGateway};

/// The audit records written so far, once there are at least `count`.
pub async fn records(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("every audit line is JSON"))
            .collect();
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
