//! Rate-limit check cost: local (governor in this process) and shared (one Redis
//! script per request), one request at a time and 64 at once over the multiplexed
//! connection (which pipelines them).
//!
//! `cargo bench --bench rate_limits`; the shared cases need Redis on
//! `PORTCULLIS_TEST_REDIS` (default `redis://127.0.0.1:6379`) and are skipped
//! without it. Keys live under a `bench-…` prefix and expire by themselves.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::RedisSettings;
use portcullis::metrics::Metrics;
use portcullis::rate_limit::{LimitClass, RateLimitSettings, RateLimiter, Store, Subject};
use portcullis::secret::Secret;

fn classes() -> Vec<Arc<LimitClass>> {
    // Generous enough never to refuse during a run: the cost of counting is measured.
    vec![Arc::new(
        LimitClass::parse("api", "1000000/s per user").expect("class"),
    )]
}

fn subject(user: i64) -> Subject<'static> {
    Subject {
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, (user % 250) as u8)),
        user: Some(user),
        account: Some(user / 10),
        route: "sensor-data-read",
        login: None,
    }
}

fn limiter(store: Store) -> RateLimiter {
    let redis = RedisSettings {
        url: Secret::new(
            std::env::var("PORTCULLIS_TEST_REDIS")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        prefix: format!("bench-{}", std::process::id()),
        timeout: Duration::from_secs(1),
    };
    let settings = RateLimitSettings {
        store,
        ..RateLimitSettings::default()
    };
    RateLimiter::new(
        &settings,
        Some(&redis),
        Arc::new(Metrics::new().expect("metrics")),
    )
    .expect("limiter")
}

fn local(c: &mut Criterion) {
    let limiter = limiter(Store::Local);
    let classes = classes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let alice = subject(1);
    c.bench_function("rate limit: local, one key", |b| {
        b.iter(|| runtime.block_on(limiter.check(&classes, &alice)))
    });
    let mut user = 0;
    c.bench_function("rate limit: local, 10k keys in turn", |b| {
        b.iter(|| {
            user = (user + 1) % 10_000;
            runtime.block_on(limiter.check(&classes, &subject(user)))
        })
    });
}

fn shared(c: &mut Criterion) {
    let limiter = Arc::new(limiter(Store::Redis));
    let classes = Arc::new(classes());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if runtime
        .block_on(limiter.check(&classes, &subject(1)))
        .is_err()
    {
        eprintln!("skipping the shared-mode benchmarks: Redis does not answer");
        return;
    }
    c.bench_function("rate limit: redis, one at a time", |b| {
        b.iter(|| runtime.block_on(limiter.check(&classes, &subject(1))))
    });
    let mut group = c.benchmark_group("rate limit: redis, 64 at once");
    group.throughput(criterion::Throughput::Elements(64));
    group.bench_function("batch", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut tasks = Vec::with_capacity(64);
                for user in 0..64 {
                    let limiter = limiter.clone();
                    let classes = classes.clone();
                    tasks.push(tokio::spawn(async move {
                        limiter.check(&classes, &subject(user)).await.is_ok()
                    }));
                }
                for task in tasks {
                    assert!(task.await.expect("task"));
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, local, shared);
criterion_main!(benches);
