//! Bad configuration is reported completely, with file:line:col and a hint.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::config;
use portcullis::dev_certs::DevCertificates;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

/// `# expect: LINE:COL: SEVERITY: TEXT` lines at the top of a fixture.
fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_fixture_reports_exactly_what_it_expects() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` lines",
            path.display()
        );
        let loaded = config::parse(&path, text, Vec::new());
        let lines = loaded.report.one_line_each();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        for expectation in &expected {
            let wanted = format!("{name}:{expectation}");
            assert!(
                lines.iter().any(|line| line.contains(&wanted)),
                "{name}: missing `{expectation}`; got:\n{}",
                lines.join("\n")
            );
        }
        let expected_errors = expected.iter().filter(|e| e.contains(": error: ")).count();
        assert_eq!(
            loaded.report.errors(),
            expected_errors,
            "{name}: unexpected errors:\n{}",
            lines.join("\n")
        );
        assert!(
            loaded.config.is_none(),
            "{name}: a config with errors must not load"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures");
}

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("run portcullis");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_exits_78_and_shows_every_problem_with_its_location() {
    let fixture = fixtures().join("names-and-modes.toml");
    let (code, _, stderr) =
        portcullis(&["check", "--config", fixture.to_str().expect("utf8")], &[]);
    assert_eq!(code, 78, "{stderr}");
    for wanted in [
        "names-and-modes.toml:22:11: error: unknown backend `flexmesures`",
        "names-and-modes.toml:23:8: error: unknown auth mode `tokn`",
        "did you mean `flexmeasures`?",
        "5 error(s)",
    ] {
        assert!(stderr.contains(wanted), "missing `{wanted}` in:\n{stderr}");
    }
}

/// A directory with a valid configuration and fresh certificates.
fn valid_setup(extra: &str) -> (tempfile::TempDir, PathBuf, DevCertificates) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = DevCertificates::generate().expect("certs");
    certificates.write(dir.path()).expect("write certs");
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttps = [\"127.0.0.1:8443\"]\n\n[tls]\ncertificate = \"localhost.pem\"\nprivate_key = \"localhost-key.pem\"\n\n\
             [backends.b]\naddress = \"127.0.0.1:5000\"\n\n[[route]]\nid = \"all\"\npath_prefix = \"/\"\nbackend = \"b\"\nauth = \"public\"\n{extra}"
        ),
    )
    .expect("write config");
    (dir, path, certificates)
}

#[test]
fn check_accepts_a_valid_configuration() {
    let (_dir, path, _) = valid_setup("");
    let (code, stdout, stderr) =
        portcullis(&["check", "--config", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok (1 route(s), 1 backend(s), 0 warning(s))"),
        "{stdout}"
    );
}

#[test]
fn certificate_problems_point_at_their_keys() {
    let (dir, path, _) = valid_setup("");
    // A key from another certificate: reported at `certificate` (line 5).
    let other = DevCertificates::generate().expect("certs");
    std::fs::write(dir.path().join("localhost-key.pem"), &other.key_pem).expect("write");
    let (code, _, stderr) = portcullis(&["check", "--config", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains(
            "portcullis.toml:5:15: error: the private key does not belong to the certificate"
        ),
        "{stderr}"
    );
    // Not PEM at all: no panic, a clear error.
    std::fs::write(dir.path().join("localhost.pem"), "not a certificate").expect("write");
    let (code, _, stderr) = portcullis(&["check", "--config", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains("portcullis.toml:5:15: error:")
            && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );
    // And `run` refuses to start with it, the same way.
    let (code, _, stderr) = portcullis(&["run", "--config", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 78, "{stderr}");
}

#[test]
fn soon_expiring_certificates_are_a_warning() {
    let (dir, path, _) = valid_setup("");
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let short = DevCertificates::generate_valid(
        &["localhost"],
        start,
        std::time::Duration::from_secs(2 * 24 * 3600),
    )
    .expect("certs");
    short.write(dir.path()).expect("write");
    let (code, stdout, stderr) =
        portcullis(&["check", "--config", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: the certificate expires in"),
        "{stderr}"
    );
    assert!(stdout.contains("1 warning(s)"), "{stdout}");
}

#[test]
fn environment_overrides_apply_and_their_errors_name_the_variable() {
    let (_dir, path, _) = valid_setup("");
    let env = vec![
        ("PORTCULLIS__SERVER__THREADS".to_owned(), "3".to_owned()),
        (
            "PORTCULLIS__LISTEN__HTTPS".to_owned(),
            "127.0.0.1:9443".to_owned(),
        ),
        (
            "PORTCULLIS__BACKENDS__B__ADDRESS".to_owned(),
            "127.0.0.1:6000".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let loaded = config::load_with_env(&path, env);
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{}", loaded.report.render(false)));
    assert_eq!(config.server.threads, 3);
    assert_eq!(
        config.listen.https,
        vec!["127.0.0.1:9443".parse().expect("addr")]
    );
    assert_eq!(
        config.backends["b"].address,
        "127.0.0.1:6000".parse().expect("addr")
    );

    let env = vec![
        ("PORTCULLIS__SERVER__THREADS".to_owned(), "many".to_owned()),
        ("PORTCULLIS__LOG__FORMAT".to_owned(), "xml".to_owned()),
    ];
    let loaded = config::load_with_env(&path, env);
    let lines = loaded.report.one_line_each().join("\n");
    assert!(
        lines.contains("environment:2:25: error: unknown log format `xml`"),
        "{lines}"
    );
    assert!(
        lines.contains("environment:1:29: error: in [server]: invalid type: string \"many\""),
        "{lines}"
    );
    assert_eq!(loaded.report.errors(), 2, "{lines}");
    assert!(
        loaded
            .report
            .render(false)
            .contains("PORTCULLIS__SERVER__THREADS=many")
    );
}

#[test]
fn example_configuration_is_valid_and_documents_every_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/portcullis.example.toml");
    let text = std::fs::read_to_string(&example).expect("read example");
    for (section, keys) in config::schema() {
        let header = if section == "route" {
            "[[route]]".to_owned()
        } else {
            format!("[{section}]")
        };
        let header = header.replace("NAME", "");
        // Sections for another setup (a FlexMeasures directory) are shown commented out.
        let start = text
            .find(&format!("\n{}", header.trim_end_matches(']')))
            .or_else(|| text.find(&format!("\n# {header}")))
            .unwrap_or_else(|| panic!("example has no {header} section"));
        let rest = &text[start..];
        // Only this section: up to the next table header.
        let end = rest
            .get(1..)
            .and_then(|r| r.find("\n["))
            .map_or(rest.len(), |i| i + 1);
        let rest = &rest[..end];
        for key in keys {
            assert!(
                rest.contains(&format!("\n{key} = ")) || rest.contains(&format!("\n# {key} = ")),
                "example does not document `{key}` in {header}"
            );
        }
    }
    // With real certificates in place, the example passes the full check.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DevCertificates::generate()
        .expect("certs")
        .write(dir.path())
        .expect("write");
    let key = dir.path().join("secret.key");
    std::fs::write(&key, "k".repeat(48)).expect("write key");
    let env = vec![
        (
            "PORTCULLIS__TLS__CERTIFICATE".to_owned(),
            paths.certificate.display().to_string(),
        ),
        (
            "PORTCULLIS__TLS__PRIVATE_KEY".to_owned(),
            paths.private_key.display().to_string(),
        ),
        (
            "PORTCULLIS__TOKENS__SECRETS".to_owned(),
            format!("file:{}", key.display()),
        ),
        (
            "PORTCULLIS__WEB_LOGIN__SECRET".to_owned(),
            format!("file:{}", key.display()),
        ),
        (
            "PORTCULLIS__IDENTITY_HEADERS__SIGNING_SECRET".to_owned(),
            format!("file:{}", key.display()),
        ),
    ];
    let loaded = config::load_with_env(&example, env);
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{}", loaded.report.render(false)));
    let problems = portcullis::tls::check(&config);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = portcullis(&["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for command in [
            "run",
            "check",
            "certs",
            "demo",
            "account",
            "user",
            "token",
            "directory",
        ] {
            assert!(
                stdout.contains(command),
                "{shell} completion lacks `{command}`"
            );
        }
    }
    let (code, _, _) = portcullis(&["completions", "cmd.exe"], &[]);
    assert_eq!(code, 2, "an unknown shell is a usage error");
}

/// The README's configuration for FlexMeasures loads, given its files.
#[test]
fn the_readme_flexmeasures_configuration_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("readme");
    let section = readme
        .split_once("## In front of FlexMeasures")
        .expect("the README has the section")
        .1;
    let text = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a toml block")
        .0;
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DevCertificates::generate()
        .expect("certs")
        .write(dir.path())
        .expect("write");
    let secret = dir.path().join("secret_key");
    std::fs::write(&secret, b"24 random bytes\x00\xff\n").expect("write key");
    let salt = dir.path().join("salt");
    std::fs::write(&salt, b"salt").expect("write salt");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::copy(
        root.join("policies/flexmeasures.toml"),
        policies.join("flexmeasures.toml"),
    )
    .expect("copy");
    let env = vec![
        (
            "PORTCULLIS__TLS__CERTIFICATE".to_owned(),
            paths.certificate.display().to_string(),
        ),
        (
            "PORTCULLIS__TLS__PRIVATE_KEY".to_owned(),
            paths.private_key.display().to_string(),
        ),
        (
            "PORTCULLIS__FLEXMEASURES__SECRET_KEY".to_owned(),
            format!("file:{}", secret.display()),
        ),
        (
            "PORTCULLIS__FLEXMEASURES__PASSWORD_SALT".to_owned(),
            format!("file:{}", salt.display()),
        ),
        (
            "PORTCULLIS__POLICIES__DIR".to_owned(),
            policies.display().to_string(),
        ),
        (
            "PORTCULLIS__DIRECTORY__STATE".to_owned(),
            format!("sqlite:{}", dir.path().join("state.db").display()),
        ),
    ];
    let loaded = config::parse(&dir.path().join("portcullis.toml"), text.to_owned(), env);
    assert!(loaded.config.is_some(), "{}", loaded.report.render(false));
    let config = loaded.config.expect("config");
    let flexmeasures = config.flexmeasures.expect("[flexmeasures]");
    // The key file is read byte for byte, newline included.
    assert_eq!(
        flexmeasures.secret_keys[0].expose().as_slice(),
        b"24 random bytes\x00\xff\n"
    );
    assert_eq!(flexmeasures.password_salt.expose().as_slice(), b"salt");
    assert!(config.rules.is_some_and(|rules| rules.len() > 20));
}

/// The configurations shipped for compose and Kubernetes load without errors, given
/// a readable secret and a resolvable backend (their real ones exist only there).
#[test]
fn shipped_deployment_configurations_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(root.join("deploy/compose/portcullis.toml"))
        .expect("compose config");
    let configmap =
        std::fs::read_to_string(root.join("deploy/kubernetes/configmap.yaml")).expect("configmap");
    let kubernetes: String = configmap
        .split_once("portcullis.toml: |\n")
        .expect("the configmap holds portcullis.toml")
        .1
        .lines()
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("token.key");
    std::fs::write(&key, "k".repeat(48)).expect("write key");
    for (name, text, backend) in [
        ("compose", compose, "ECHO"),
        ("kubernetes", kubernetes, "APP"),
    ] {
        let env = vec![
            (
                "PORTCULLIS__TOKENS__SECRETS".to_owned(),
                format!("file:{}", key.display()),
            ),
            (
                format!("PORTCULLIS__BACKENDS__{backend}__ADDRESS"),
                "127.0.0.1:5000".to_owned(),
            ),
        ];
        let loaded = config::parse(&dir.path().join(format!("{name}.toml")), text, env);
        assert!(
            loaded.config.is_some(),
            "{name}: {}",
            loaded.report.render(false)
        );
        let config = loaded.config.expect("config");
        assert!(
            config.directory.is_some() && config.redis.is_some(),
            "{name}"
        );
    }
}

/// Settings that take one of a few words: a near miss gets the nearest word, any other
/// word the setting's help, each at its file:line:col.
#[test]
fn unknown_words_get_the_nearest_choice_or_the_list_of_choices() {
    let text = r#"[listen]
https = ["127.0.0.1:8443"]
[tls]
certificate = "cert.pem"
private_key = "key.pem"
[log]
format = "jsn"
[directory]
kind = "flexmesures"
database = "sqlite::memory:"
password_priority = "realtime"
[rate_limits]
store = "redsi"
on_store_error = "ignore"
"#;
    let loaded = config::parse(Path::new("portcullis.toml"), text.into(), Vec::new());
    assert!(loaded.config.is_none());
    let lines = loaded.report.one_line_each().join("\n");
    for wanted in [
        "portcullis.toml:7:10: error: unknown log format `jsn` (help: did you mean `json`?)",
        "portcullis.toml:9:8: error: unknown directory kind `flexmesures` (help: did you mean `flexmeasures`?)",
        "portcullis.toml:11:21: error: unknown password_priority `realtime` (help: use `background`",
        "portcullis.toml:13:9: error: unknown store `redsi` (help: did you mean `redis`?)",
        "portcullis.toml:14:18: error: unknown `on_store_error` `ignore` (help: use `local`, `deny` or `allow`)",
    ] {
        assert!(lines.contains(wanted), "missing `{wanted}` in:\n{lines}");
    }
}

/// Every code block in the shipped Markdown ends with a bare fence: a closing fence
/// with text after it does not close the block, and the rest of the page would render
/// as code.
#[test]
fn documentation_code_blocks_are_closed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "README.md",
        "CHANGELOG.md",
        "deploy/README.md",
        "benches/load/RESULTS.md",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("read");
        let mut open_at = None;
        for (index, line) in text.lines().enumerate() {
            let Some(after) = line.strip_prefix("```") else {
                continue;
            };
            match open_at {
                None => open_at = Some(index + 1),
                Some(_) => {
                    assert!(
                        after.trim().is_empty(),
                        "{file}:{}: text after a closing fence: {line}",
                        index + 1
                    );
                    open_at = None;
                }
            }
        }
        assert_eq!(open_at, None, "{file}: a code block is never closed");
    }
}
