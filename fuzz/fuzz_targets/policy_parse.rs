//! Policy files from arbitrary text: loading never panics, and a file that loads
//! without errors yields rules (bad input gets a report, never a crash).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::policy::file::{Inputs, load};

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("tempdir"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    std::fs::write(DIR.path().join("fuzz.toml"), text).expect("write");
    let inputs = Inputs {
        backends: vec!["api".into(), "ui".into()],
        database: true,
        ..Inputs::default()
    };
    let loaded = load(DIR.path(), &inputs);
    let errors = loaded.reports.iter().any(|report| report.has_errors());
    assert!(
        errors || loaded.rules.is_some(),
        "no errors and no rules for {text:?}"
    );
});
