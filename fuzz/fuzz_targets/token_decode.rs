//! Both token formats, from arbitrary text: decoding never panics, and whatever it
//! accepts was signed with the key (the fuzzer cannot forge a signature).
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portcullis::secret::Secret;
use portcullis::token::TokenKeys;
use portcullis::token::flask_security::FlaskSecurityKeys;

static NATIVE: LazyLock<TokenKeys> = LazyLock::new(|| {
    TokenKeys::new(
        &[Secret::new(b"fuzzing key, at least 32 bytes long".to_vec())],
        Duration::from_secs(6 * 3600),
        Duration::from_secs(30),
    )
    .expect("keys")
});

static FLASK: LazyLock<FlaskSecurityKeys> = LazyLock::new(|| {
    FlaskSecurityKeys::new(
        &[Secret::new(b"fuzzing secret key".to_vec())],
        "remember-salt",
        Duration::from_secs(6 * 3600),
        Duration::from_secs(30),
    )
    .expect("keys")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = 1_800_000_000;
    assert!(
        NATIVE.decode(text, now).is_err(),
        "forged native token accepted: {text:?}"
    );
    assert!(
        FLASK.decode(text, now).is_err(),
        "forged FlexMeasures token accepted: {text:?}"
    );
    // A genuine token with the fuzz input appended or prepended is refused too.
    let genuine = NATIVE.issue(1, "$5$rounds=1000$salt$hash", now);
    let spliced = format!("{genuine}{text}");
    if !text.is_empty() {
        assert!(
            NATIVE.decode(&spliced, now).is_err(),
            "spliced token accepted: {spliced:?}"
        );
    }
});
