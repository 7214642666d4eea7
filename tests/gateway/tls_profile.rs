//! The TLS listener against Mozilla's "intermediate" server profile, checked by
//! sslyze (from PyPI, in `.ci/venv`) over loopback, and downgrades refused.

use std::process::Command;

use crate::support::{EchoBackend, TestGateway, public_catch_all};

#[test]
fn the_tls_listener_meets_mozillas_intermediate_profile() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let target = gateway.https.to_string();
    let json = gateway.config.with_file_name("sslyze.json");
    // The certificate is checked against the test's own CA, not the public roots.
    let ca = gateway.config.with_file_name("test-ca.pem");
    std::fs::write(&ca, &gateway.ca_pem).expect("write ca");
    let output = Command::new(crate::flexmeasures::python())
        .args([
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            "--json_out",
        ])
        .arg(&json)
        .arg("--certinfo_ca_file")
        .arg(&ca)
        .arg(&target)
        .output()
        .expect("run sslyze (`bash .ci/test` installs it in .ci/venv)");
    let text = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("sslyze json")).expect("json");
    let result = &report["server_scan_results"][0]["scan_result"];
    let validation = &result["certificate_info"]["result"]["certificate_deployments"][0]["path_validation_results"];
    assert!(
        validation.as_array().is_some_and(|stores| stores
            .iter()
            .any(|store| store["was_validation_successful"] == true)),
        "the certificate does not validate against the test CA: {validation:#}"
    );
    assert!(
        output.status.success() && text.contains("OK - Compliant"),
        "sslyze: {}\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // What the profile means, read from sslyze's own findings.
    let accepted = |suite: &str| {
        result[suite]["result"]["accepted_cipher_suites"]
            .as_array()
            .map_or(0, Vec::len)
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(accepted(old), 0, "{old} accepted");
    }
    assert!(accepted("tls_1_2_cipher_suites") > 0);
    assert!(accepted("tls_1_3_cipher_suites") > 0);
    let renegotiation = &result["session_renegotiation"]["result"];
    assert_eq!(
        renegotiation["is_vulnerable_to_client_renegotiation_dos"],
        false
    );
    assert_eq!(renegotiation["supports_secure_renegotiation"], true);
    assert_eq!(
        result["tls_fallback_scsv"]["result"]["supports_fallback_scsv"], true,
        "a downgrade from TLS 1.3 is refused"
    );
}
