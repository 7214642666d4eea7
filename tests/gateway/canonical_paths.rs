//! The path the policy decides on is the path the backend receives.

use portcullis::canonical::canonicalize;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::{EchoBackend, TestGateway, public_catch_all};

/// Targets a backend could read differently from the gateway: all refused with 400.
const AMBIGUOUS: &[&[u8]] = &[
    b"/a%2fb",
    b"/a%2Fb",
    b"/a%5cb",
    b"/%2e%2e/etc/passwd",
    b"/%2E%2E/admin",
    b"/a/%2e/b",
    b"/a%00b",
    b"/a%3bb",
    b"/a%252fb",
    b"/a\\b",
    b"/a/../b",
    b"/a/./b",
    b"/..",
    b"//evil.com/x",
    b"/a//b",
    b"/a;jsessionid=x",
    b"/a%0d%0ab",
    b"/a\x01b",
    b"/%ff",
    b"/%c0%ae%c0%ae/",
    b"/a%zz",
    b"/a?x=%zz",
    b"*",
];

#[tokio::test]
async fn ambiguous_targets_are_refused_before_any_backend() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();
    for target in AMBIGUOUS {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let reply = client.raw(&request).await;
        assert_eq!(
            reply.status,
            400,
            "target {:?}: {}",
            String::from_utf8_lossy(target),
            reply.text()
        );
        assert!(reply.header("strict-transport-security").is_some());
    }
    assert!(
        backend.received().is_empty(),
        "backend saw {:#?}",
        backend.received()
    );
}

#[tokio::test]
async fn ambiguous_targets_are_refused_over_h2_too() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();
    for target in ["/a%2fb", "/a/../b", "/a//b", "/a;x", "/%2e"] {
        let reply = client.h2("GET", target, &[]).await;
        assert_eq!(reply.status, 400, "{target}");
    }
    assert!(backend.received().is_empty());
}

#[tokio::test]
async fn backend_receives_the_canonical_form() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();
    let cases = [
        ("/%61%62c", "/abc"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%3fb?x=%2f&y=%25", "/a%3Fb?x=%2f&y=%25"),
        ("/api/v3_0/sensors/1/data/", "/api/v3_0/sensors/1/data/"),
        ("/x#fragment", "/x"),
        ("/~user/a-b_c.d", "/~user/a-b_c.d"),
    ];
    for (sent, _) in cases {
        assert_eq!(client.get(sent, "").await.status, 200, "{sent}");
    }
    let received: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    let expected: Vec<&str> = cases.iter().map(|(_, canonical)| *canonical).collect();
    assert_eq!(received, expected);
}

/// Whatever the client sends, the backend gets exactly `canonicalize` of it, or nothing.
#[test]
fn backend_receives_exactly_the_canonical_target() {
    let backend = EchoBackend::start();
    let gateway = TestGateway::start(&public_catch_all(backend.address));
    let client = gateway.tls();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let targets = (
        proptest::collection::vec("[a-zA-Z0-9._~!$&'()*+,=:@-]{1,8}|%[0-9a-fA-F]{2}", 1..5),
        proptest::option::of("[a-z0-9=&%]{0,12}"),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&targets, |(segments, query)| {
            let mut target = format!("/{}", segments.join("/"));
            if let Some(query) = query {
                target.push('?');
                target.push_str(&query);
            }
            let before = backend.received().len();
            let reply = runtime.block_on(client.get(&target, ""));
            let received = backend.received();
            match canonicalize(target.as_bytes()) {
                Ok(canonical) => {
                    prop_assert_eq!(reply.status, 200);
                    prop_assert_eq!(received.len(), before + 1);
                    let forwarded = received.last().map(|r| r.target.clone());
                    prop_assert_eq!(forwarded, Some(canonical.path_and_query()));
                }
                Err(_) => {
                    prop_assert_eq!(reply.status, 400);
                    prop_assert_eq!(received.len(), before);
                }
            }
            Ok(())
        })
        .expect("the backend receives exactly the canonical target");
}
