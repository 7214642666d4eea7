//! Policy decision cost against the number of rules: finding the rule (host, method,
//! path template) and deciding its allow list, for 10, 1 000 and 10 000 rules.
//! `cargo bench --bench policy`.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::identity::Identity;
use portcullis::policy::principal::{Allow, Principal};
use portcullis::policy::rules::{METHODS, Mode, Rule, RuleSet};
use portcullis::policy::template::Template;
use portcullis::route::{Access, HostPattern};

fn rules(count: usize) -> RuleSet {
    let rules = (0..count)
        .map(|i| Rule {
            id: format!("rule-{i}").into(),
            host: HostPattern::Any,
            methods: vec![METHODS[i % 3]],
            template: Template::parse(&format!(
                "/api/v{}/things-{i}/{{id}}/items/{{rest*}}",
                i % 7
            ))
            .expect("template"),
            backend: "app".into(),
            access: Access::Token,
            mfa: true,
            permission: None,
            allow: Allow {
                any_of: vec![
                    vec![Principal::parse("account:{id}").expect("principal")],
                    vec![
                        Principal::parse("role:consultant").expect("principal"),
                        Principal::parse("account-role:MDC").expect("principal"),
                    ],
                ],
            },
            mode: Mode::Enforce,
            resource: None,
            rate_limits: Vec::new(),
        })
        .collect();
    RuleSet::build(rules).expect("no conflicts")
}

fn decisions(c: &mut Criterion) {
    let identity = Identity {
        user_id: 1,
        account_id: 42,
        email: "a@example.com".into(),
        roles: vec!["consultant".into()],
        account_roles: vec!["Prosumer".into()],
    };
    let mut group = c.benchmark_group("policy decision (find + allow list)");
    for count in [10usize, 1_000, 10_000] {
        let set = rules(count);
        let target = count / 2;
        let method = METHODS[target % 3];
        let path = format!("/api/v{}/things-{target}/42/items/a/b", target % 7);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| {
                let matched = set
                    .find(Some("api.example.com"), method, &path)
                    .expect("rule");
                let value = |name: &str| matched.parameter(name);
                matched.rule.decide(&identity, method, value)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
