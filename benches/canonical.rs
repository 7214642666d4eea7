//! Path canonicalization, the first thing done to every request target: a short
//! API path, a long one with a query, percent-encoded characters, and an ambiguous
//! target that is refused. `cargo bench --bench canonical`.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::canonical::canonicalize;

fn canonicalization(c: &mut Criterion) {
    let long = format!(
        "/api/v3_0/sensors/{}/data?start=2026-01-01T00:00:00Z&duration=PT24H&unit=kW&resolution=PT15M",
        "1234567890/".repeat(8)
    );
    let targets = [
        ("short", "/api/v3_0/assets/42".to_owned()),
        ("long with query", long),
        (
            "encoded",
            "/api/v3_0/assets/caf%C3%A9%20%2B%20bar/items".to_owned(),
        ),
    ];
    let mut group = c.benchmark_group("canonicalize");
    for (name, target) in &targets {
        canonicalize(target.as_bytes()).expect("canonical");
        group.bench_with_input(BenchmarkId::from_parameter(name), target, |b, target| {
            b.iter(|| canonicalize(target.as_bytes()))
        });
    }
    let refused = "/api/v3_0/assets/%2e%2e/admin";
    canonicalize(refused.as_bytes()).expect_err("ambiguous");
    group.bench_function("refused (encoded dot segment)", |b| {
        b.iter(|| canonicalize(refused.as_bytes()))
    });
    group.finish();
}

criterion_group!(benches, canonicalization);
criterion_main!(benches);
