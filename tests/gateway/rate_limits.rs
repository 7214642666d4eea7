//! Rate limits and login lockouts through the real gateway: local budgets, budgets
//! shared by two instances through Redis, and each `on_store_error` mode with the
//! Redis server killed mid-test.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{
    DEADLINE, EchoBackend, Ports, TestGateway, config_text, free_ports, metric, public_catch_all,
};
use super::users::{
    PASSWORD, Stores, add_user, cli, cli_ok, get_with, login, redis_url, seed, token, token_of,
};

/// A gateway with one public catch-all route under `[rate_limits]` `section`.
fn limited(backend: &EchoBackend, section: &str) -> TestGateway {
    TestGateway::start(&format!("{section}\n{}", public_catch_all(backend.address)))
}

async fn statuses(gateway: &TestGateway, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for n in 0..count {
        statuses.push(gateway.tls().get(&format!("/item/{n}"), "").await.status);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_a_limit_get_429_with_retry_headers_and_never_reach_the_backend() {
    let backend = EchoBackend::start();
    let gateway = limited(
        &backend,
        "[rate_limits]\ndefault = [\"tight\"]\n[rate_limits.classes]\ntight = \"3/h per ip\"\n",
    );
    assert_eq!(statuses(&gateway, 3).await, [200, 200, 200]);
    let refused = gateway.tls().get("/item/4", "").await;
    assert_eq!(refused.status, 429);
    // 3 per hour: the next one in 20 minutes.
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1195..=1200).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        refused.header("ratelimit-policy").as_deref(),
        Some(r#""tight";q=3;w=3600"#)
    );
    assert_eq!(
        refused.header("ratelimit").as_deref(),
        Some(format!(r#""tight";r=0;t={retry}"#).as_str())
    );
    assert!(refused.header("strict-transport-security").is_some());
    let body: serde_json::Value = serde_json::from_slice(&refused.body).expect("json body");
    assert_eq!(body["status"], 429);
    assert_eq!(
        backend.received().len(),
        3,
        "the refused request was forwarded"
    );

    assert_eq!(
        metric(&gateway, r#"portcullis_rate_limited_total{class="tight"}"#).await,
        Some(1.0)
    );
    let records = super::audit::decisions(&gateway.audit, 4).await;
    let last = &records[3];
    assert_eq!(last["decision"], "refused");
    assert_eq!(last["status"], 429);
    assert_eq!(last["reason"], "rate limit `tight` (3/1h per ip) exceeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_have_budgets_of_their_own_and_anonymous_callers_count_by_address() {
    let backend = EchoBackend::start();
    let stores = Stores {
        extra:
            "\n[rate_limits]\ndefault = [\"api\"]\n[rate_limits.classes]\napi = \"2/h per user\"\n"
                .into(),
        ..Stores::sqlite()
    };
    let gateway = super::users::gateway(&stores, backend.address);
    seed(&gateway.config);
    add_user(&gateway.config, "bob@example.com", "Acme", &[]);
    let ann = token(&gateway).await;
    let bob = token_of(&gateway, "bob@example.com").await;

    let mut ann_statuses = Vec::new();
    for _ in 0..3 {
        ann_statuses.push(get_with(&gateway, "/data", &ann).await);
    }
    assert_eq!(ann_statuses, [200, 200, 429]);
    // Same address, another user: a budget of his own.
    assert_eq!(get_with(&gateway, "/data", &bob).await, 200);
    // Anonymous requests to the public route count per address, apart from users.
    let public: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(gateway.tls().get("/public/x", "").await.status);
        }
        out
    };
    assert_eq!(public, [200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_rules_name_classes_from_policy_files_and_the_configuration() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start_with(|ports: Ports, dir: &Path| {
        let policies = dir.join("policies");
        std::fs::create_dir(&policies).expect("mkdir");
        std::fs::write(
            policies.join("limits.toml"),
            r#"
[rate_limits]
per-route = "2/h per ip+route"

[[route]]
id = "limited"
match = "GET /limited/{x}"
backend = "echo"
auth = "public"
rate_limit = ["per-route", "global"]

[[route]]
id = "unlimited"
match = "GET /unlimited/{x}"
backend = "echo"
auth = "public"
rate_limit = []

[[route]]
id = "defaulted"
match = "GET /defaulted/{x}"
backend = "echo"
auth = "public"
"#,
        )
        .expect("write policy");
        let body = format!(
            "[policies]\ndir = \"{}\"\n\n[rate_limits]\ndefault = [\"global\"]\n[rate_limits.classes]\nglobal = \"4/h per ip\"\n\n[backends.echo]\naddress = \"{}\"\n",
            policies.display(),
            backend.address
        );
        config_text(ports, dir, &body)
    });
    let get = |path: &'static str| {
        let client = gateway.tls();
        async move { client.get(path, "").await.status }
    };
    assert_eq!(get("/limited/a").await, 200);
    assert_eq!(get("/limited/b").await, 200);
    assert_eq!(get("/limited/c").await, 429, "per-route limit of 2");
    for _ in 0..5 {
        assert_eq!(
            get("/unlimited/a").await,
            200,
            "rate_limit = [] is unlimited"
        );
    }
    // `global` (4/h per ip) counted the two limited requests: two more pass.
    assert_eq!(get("/defaulted/a").await, 200);
    assert_eq!(get("/defaulted/b").await, 200);
    assert_eq!(get("/defaulted/c").await, 429);
}

#[test]
fn limit_mistakes_are_reported_with_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        r#"[listen]
https = ["127.0.0.1:8443"]

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[rate_limits]
store = "redis"
default = ["apii"]
login = "10/min per user"

[rate_limits.classes]
api = "500/min per users"
burst = "5/fortnight per ip"

[backends.echo]
address = "127.0.0.1:9"

[[route]]
id = "all"
path_prefix = "/"
backend = "echo"
auth = "public"
rate_limit = "nope"
"#,
    )
    .expect("write");
    let output = cli(&config, &["check"], None);
    assert_eq!(output.status.code(), Some(78));
    let text = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "portcullis.toml:9:9: error: `store = \"redis\"` needs a `[redis]` section",
        "portcullis.toml:10:11: error: unknown rate-limit class `apii`",
        "portcullis.toml:11:9: error: a login limit cannot count per `user`",
        "portcullis.toml:14:7: error: invalid limit: unknown key `users` (help: did you mean `user`?)",
        "portcullis.toml:15:9: error: invalid limit: `fortnight` is not a period",
        "portcullis.toml:25:14: error: unknown rate-limit class `nope`",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

/// A gateway with users in SQLite and the given `[rate_limits]` for logins.
fn login_gateway(backend: &EchoBackend, section: &str) -> TestGateway {
    let stores = Stores {
        extra: format!("\n[rate_limits]\n{section}\n"),
        ..Stores::sqlite()
    };
    let gateway = super::users::gateway(&stores, backend.address);
    seed(&gateway.config);
    gateway
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_lock_the_login_out_until_an_admin_lifts_it() {
    let backend = EchoBackend::start();
    let gateway = login_gateway(
        &backend,
        "login = \"100/min per ip\"\nlogin_failures = \"3/h per login\"\nlockout = \"10m\"",
    );
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..4 {
        known.push(login(&gateway, "ann@example.com", "wrong password").await.0);
        unknown.push(
            login(&gateway, "nobody@example.com", "wrong password")
                .await
                .0,
        );
    }
    // The fourth failure exceeds 3/h and locks the login out; it is still a 401.
    assert_eq!(known, [401, 401, 401, 401]);
    assert_eq!(unknown, known, "unknown logins are treated alike");

    // SECURITY: now even the right password is refused, before it is checked.
    let body = serde_json::json!({"email": "ann@example.com", "password": PASSWORD}).to_string();
    let locked = gateway
        .tls()
        .post("/api/requestAuthToken", "application/json", &body)
        .await;
    assert_eq!(locked.status, 429);
    let retry: i64 = locked
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((590..=600).contains(&retry), "Retry-After {retry}");
    assert!(!locked.text().contains("ann@"), "the body names nobody");
    assert_eq!(
        metric(&gateway, "portcullis_login_lockouts_total").await,
        Some(2.0)
    );
    // Other logins are not affected.
    add_user(&gateway.config, "bob@example.com", "Acme", &[]);
    assert_eq!(login(&gateway, "bob@example.com", PASSWORD).await.0, 200);

    let listed = cli_ok(&gateway.config, &["lockout", "list"], None);
    assert!(listed.contains("login=ann@example.com"), "{listed}");
    assert!(listed.contains("login=nobody@example.com"), "{listed}");
    assert!(listed.contains("login-failures"), "{listed}");

    let lifted = cli_ok(
        &gateway.config,
        &["lockout", "lift", "--login", "Ann@Example.com"],
        None,
    );
    assert!(
        lifted.contains("lifted the lockout of `login=ann@example.com`"),
        "{lifted}"
    );
    assert_eq!(login(&gateway, "ann@example.com", PASSWORD).await.0, 200);
    let listed = cli_ok(&gateway.config, &["lockout", "list"], None);
    assert!(!listed.contains("login=ann@example.com"), "{listed}");
    let all = cli_ok(&gateway.config, &["lockout", "lift", "--all"], None);
    assert!(all.contains("lifted 1 lockout(s)"), "{all}");
    let nothing = cli(&gateway.config, &["lockout", "lift"], None);
    assert_eq!(nothing.status.code(), Some(2), "lift needs a target");

    // Audited as security events, with the key and without any password.
    let records = super::audit::records(&gateway.audit, 10).await;
    let events: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "login-locked-out")
        .collect();
    assert_eq!(events.len(), 2);
    assert!(
        events[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("login=ann@example.com") && d.contains("10m"))
    );
    let text = std::fs::read_to_string(&gateway.audit).expect("audit");
    assert!(!text.contains("wrong password") && !text.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_over_the_per_address_limit_are_refused_before_the_password_is_checked() {
    let backend = EchoBackend::start();
    let gateway = login_gateway(&backend, "login = \"3/h per ip\"\nlogin_failures = \"\"");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(login(&gateway, "ann@example.com", "wrong password").await.0);
    }
    statuses.push(login(&gateway, "ann@example.com", PASSWORD).await.0);
    statuses.push(login(&gateway, "someone@example.com", PASSWORD).await.0);
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Only the three attempts within the budget were checked.
    assert_eq!(
        metric(&gateway, r#"portcullis_logins_total{result="refused"}"#).await,
        Some(3.0)
    );
    assert_eq!(
        metric(&gateway, r#"portcullis_logins_total{result="issued"}"#).await,
        None
    );
    assert_eq!(
        metric(&gateway, r#"portcullis_rate_limited_total{class="login"}"#).await,
        Some(2.0)
    );
}

/// `[redis]` and `[rate_limits]` for a shared limit of `spec` on every route.
fn shared_section(url: &str, prefix: &str, spec: &str, on_store_error: &str) -> String {
    format!(
        "[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout = \"200ms\"\n\n[rate_limits]\nstore = \"redis\"\non_store_error = \"{on_store_error}\"\ndefault = [\"shared\"]\n[rate_limits.classes]\nshared = \"{spec}\"\n"
    )
}

pub fn unique_prefix(name: &str) -> String {
    format!("test-{name}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sharing_redis_enforce_one_global_limit() {
    let backend = EchoBackend::start();
    let section = shared_section(&redis_url(), &unique_prefix("global"), "6/h per ip", "deny");
    let first = limited(&backend, &section);
    let second = limited(&backend, &section);
    let mut statuses = Vec::new();
    for n in 0..8 {
        let gateway = if n % 2 == 0 { &first } else { &second };
        statuses.push(gateway.tls().get("/item", "").await.status);
    }
    // Alone, each instance would have admitted 6 (12 in all).
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(backend.received().len(), 6);
    let refused = first.tls().get("/item", "").await;
    assert_eq!(
        refused.header("ratelimit-policy").as_deref(),
        Some(r#""shared";q=6;w=3600"#)
    );
    assert_eq!(
        metric(&first, "portcullis_rate_limit_store_errors_total").await,
        Some(0.0)
    );
}

/// A Redis server of a test's own, on a loopback port, so it can be killed.
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> Self {
        let [address] = free_ports::<1>();
        Self::start_on(address.port())
    }

    fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/services installs it)");
        super::support::wait_until_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends requests until `want` answers or the deadline passes; returns the statuses.
async fn until_status(gateway: &TestGateway, want: u16) -> Vec<u16> {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let status = gateway.tls().get("/item", "").await.status;
        seen.push(status);
        if status == want {
            return seen;
        }
        assert!(started.elapsed() < DEADLINE, "never {want}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_deny_refuses_with_503_and_recovers_when_it_returns() {
    let backend = EchoBackend::start();
    let mut redis = OwnRedis::start();
    let gateway = limited(
        &backend,
        &shared_section(&redis.url(), &unique_prefix("deny"), "100/h per ip", "deny"),
    );
    assert_eq!(statuses(&gateway, 2).await, [200, 200]);
    redis.kill();
    let refused = gateway.tls().get("/item", "").await;
    assert_eq!(refused.status, 503, "deny: fail closed");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    let forwarded = backend.received().len();
    assert_eq!(
        forwarded, 2,
        "nothing forwarded while limits cannot be checked"
    );
    assert!(
        metric(&gateway, "portcullis_rate_limit_store_errors_total")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    // Redis back on the same port: limits are checked again without a restart.
    let _redis = OwnRedis::start_on(redis.port);
    until_status(&gateway, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_allow_admits_without_limits() {
    let backend = EchoBackend::start();
    let mut redis = OwnRedis::start();
    let gateway = limited(
        &backend,
        &shared_section(&redis.url(), &unique_prefix("allow"), "2/h per ip", "allow"),
    );
    assert_eq!(statuses(&gateway, 3).await, [200, 200, 429]);
    redis.kill();
    // The shared budget is spent, but nobody can tell: requests pass.
    assert_eq!(statuses(&gateway, 4).await, [200, 200, 200, 200]);
    assert_eq!(backend.received().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_local_limits_each_instance_on_its_own() {
    let backend = EchoBackend::start();
    let mut redis = OwnRedis::start();
    let gateway = limited(
        &backend,
        &shared_section(&redis.url(), &unique_prefix("local"), "3/h per ip", "local"),
    );
    assert_eq!(statuses(&gateway, 4).await, [200, 200, 200, 429]);
    redis.kill();
    // This instance's own budget of 3 for the address, then 429 again.
    assert_eq!(statuses(&gateway, 4).await, [200, 200, 200, 429]);
    assert!(
        metric(&gateway, "portcullis_rate_limit_store_errors_total")
            .await
            .is_some_and(|n| n >= 4.0)
    );
}

/// A public catch-all limited to `2/h per ip`, optionally behind trusted proxies.
fn per_address_gateway(backend: &EchoBackend, trusted: Option<&str>) -> TestGateway {
    TestGateway::start_with(|ports: Ports, dir: &Path| {
        let body = format!(
            "[rate_limits]\ndefault = [\"ip\"]\n[rate_limits.classes]\nip = \"2/h per ip\"\n\n{}",
            public_catch_all(backend.address)
        );
        let text = config_text(ports, dir, &body);
        match trusted {
            Some(range) => text.replace(
                "[server]\n",
                &format!("[server]\ntrusted_proxies = [\"{range}\"]\n"),
            ),
            None => text,
        }
    })
}

async fn forwarded_for(gateway: &TestGateway, client: &str) -> u16 {
    gateway
        .tls()
        .get("/item", &format!("X-Forwarded-For: {client}\r\n"))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spoofed_forwarded_for_does_not_buy_a_new_budget() {
    let backend = EchoBackend::start();
    let gateway = per_address_gateway(&backend, None);
    let mut seen = Vec::new();
    for client in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "2001:db8::9",
    ] {
        seen.push(forwarded_for(&gateway, client).await);
    }
    // Untrusted peers are counted by their own address, whatever they claim.
    assert_eq!(seen, [200, 200, 429, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    let backend = EchoBackend::start();
    let gateway = per_address_gateway(&backend, Some("127.0.0.1/32"));
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(forwarded_for(&gateway, "198.51.100.1").await);
    }
    assert_eq!(first, [200, 200, 429]);
    assert_eq!(forwarded_for(&gateway, "198.51.100.2").await, 200);
    // A client's own claim left of its address changes nothing.
    assert_eq!(
        forwarded_for(&gateway, "203.0.113.7, 198.51.100.1").await,
        429
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn housekeeping_drops_the_keys_of_refilled_budgets_while_running() {
    let backend = EchoBackend::start();
    // One request every 2 s: a key's budget is full again 2 s after its request and
    // dropped one interval later, at a housekeeping tick (every second).
    let gateway = limited(
        &backend,
        "[rate_limits]\nhousekeeping_interval = \"1s\"\ndefault = [\"slow\"]\n[rate_limits.classes]\nslow = \"5/10s per ip\"\n",
    );
    assert_eq!(statuses(&gateway, 1).await, [200]);
    let keys = |want: f64| {
        let gateway = &gateway;
        async move {
            let started = Instant::now();
            loop {
                if metric(gateway, "portcullis_rate_limit_keys").await == Some(want) {
                    return;
                }
                assert!(started.elapsed() < DEADLINE, "never {want} keys");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    keys(1.0).await;
    keys(0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_spread_over_two_instances_lock_out_on_both() {
    let backend = EchoBackend::start();
    let database = super::users::PostgresDatabase::create();
    let stores = Stores {
        postgres: Some(database.url.clone()),
        redis: Some((redis_url(), unique_prefix("lockout"))),
        extra: "\n[rate_limits]\nstore = \"redis\"\non_store_error = \"deny\"\nlogin_failures = \"3/h per login\"\nlockout = \"5m\"\n".into(),
        ..Stores::sqlite()
    };
    let first = super::users::gateway(&stores, backend.address);
    let second = super::users::gateway(&stores, backend.address);
    seed(&first.config);
    // Four failures, alternating: alone, neither instance saw more than two.
    let mut seen = Vec::new();
    for n in 0..4 {
        let gateway = if n % 2 == 0 { &first } else { &second };
        seen.push(login(gateway, "ann@example.com", "wrong password").await.0);
    }
    assert_eq!(seen, [401, 401, 401, 401]);
    for gateway in [&first, &second] {
        assert_eq!(
            login(gateway, "ann@example.com", PASSWORD).await.0,
            429,
            "the lockout holds on every instance"
        );
    }
    let listed = cli_ok(&second.config, &["lockout", "list"], None);
    assert!(listed.contains("login=ann@example.com"), "{listed}");
    cli_ok(
        &second.config,
        &["lockout", "lift", "--key", "login=ann@example.com"],
        None,
    );
    assert_eq!(login(&first, "ann@example.com", PASSWORD).await.0, 200);
}
