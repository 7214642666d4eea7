//! Request targets from arbitrary bytes: canonicalization never panics, and its
//! result is a fixed point (canonicalizing the canonical form changes nothing), so
//! the gateway and the backend cannot read one target two ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::canonical::canonicalize;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = canonicalize(data) else {
        return;
    };
    let path = target.path().to_owned();
    let again = canonicalize(path.as_bytes())
        .unwrap_or_else(|error| panic!("canonical path {path:?} refused: {error:?}"));
    assert_eq!(again.path(), path, "not a fixed point: {data:?}");
});
