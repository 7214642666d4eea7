//! Strip, then set: the headers a backend may trust (DESIGN §7, CONVENTIONS 7).
//!
//! Runs twice in the flow: right after canonicalization every client-sent header a
//! backend could mistake for the gateway's word is removed ([`Strip`]), and just before
//! forwarding the gateway sets its own ([`ForwardedFor::headers`]). The reserved names
//! live here and nowhere else; the proxy only applies these plans to pingora's headers.

pub mod auth_token;
mod identity_headers;

use std::net::IpAddr;

pub use identity_headers::{IdentitySigner, Signed, identity_headers};

use http::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Prefix of every identity header the gateway sets for backends.
pub const IDENTITY_PREFIX: &str = "x-portcullis-";
/// The request id header, sent to the backend and back to the client.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Exact names (after [`normalized`]) that only the gateway may set.
///
/// SECURITY: each of these is read by some framework as a statement about the client:
/// its address (`x-real-ip`, `true-client-ip`, …), the URL it asked for
/// (`x-original-url`, `x-rewrite-url`) or the method it used (`x-http-method-override`,
/// which would let a `POST` be authorized and then executed as `DELETE`).
const RESERVED_NAMES: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-request-id",
];

/// Name prefixes (after [`normalized`]) that only the gateway may set.
const RESERVED_PREFIXES: &[&str] = &[IDENTITY_PREFIX, "x-forwarded-"];

/// Header names compare case-insensitively, and many servers (CGI, WSGI, nginx with
/// `underscores_in_headers`) map `_` and `.` to `-`, so `X_Portcullis.User-ID` must
/// count as `x-portcullis-user-id`. Byte by byte, so that checking every header of
/// every request copies nothing.
fn normalized(byte: u8) -> u8 {
    match byte {
        b'_' | b'.' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

/// Whether `name`, normalized, starts with `prefix` (lowercase, with `-`).
fn normalized_starts_with(name: &[u8], prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .iter()
            .zip(prefix.bytes())
            .all(|(&byte, expected)| normalized(byte) == expected)
}

/// Whether a client-sent header with this name must never reach a backend.
pub fn is_reserved(name: &str) -> bool {
    let name = name.as_bytes();
    RESERVED_NAMES
        .iter()
        .any(|reserved| name.len() == reserved.len() && normalized_starts_with(name, reserved))
        || RESERVED_PREFIXES
            .iter()
            .any(|prefix| normalized_starts_with(name, prefix))
}

/// What to take out of a client's request before anything else reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strip {
    /// Reserved headers the client sent.
    pub remove: Vec<HeaderName>,
    /// The client's `Connection` header without nominations of reserved headers.
    pub connection: ConnectionRewrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionRewrite {
    /// Nothing reserved was nominated.
    Keep,
    /// Only reserved headers were nominated.
    Remove,
    Replace(HeaderValue),
}

impl Strip {
    /// Plans the removal of every reserved header a client sent, and of every
    /// `Connection` nomination of one.
    ///
    /// SECURITY: `Connection: close, X-Portcullis-User-Id` asks each hop to drop that
    /// header; the gateway's own identity headers must survive it (DESIGN §7).
    pub fn plan(headers: &HeaderMap) -> Self {
        let mut remove: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_reserved(name.as_str()))
            .cloned()
            .collect();
        remove.dedup();
        Self {
            remove,
            connection: connection_rewrite(headers),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.connection == ConnectionRewrite::Keep
    }

    /// Applies the plan to a plain header map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        match &self.connection {
            ConnectionRewrite::Keep => {}
            ConnectionRewrite::Remove => {
                headers.remove(CONNECTION);
            }
            ConnectionRewrite::Replace(value) => {
                headers.insert(CONNECTION, value.clone());
            }
        }
    }
}

fn connection_rewrite(headers: &HeaderMap) -> ConnectionRewrite {
    let tokens: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|token| String::from_utf8_lossy(token).trim().to_owned())
        .filter(|token| !token.is_empty())
        .collect();
    if !tokens.iter().any(|token| is_reserved(token)) {
        return ConnectionRewrite::Keep;
    }
    let kept: Vec<String> = tokens.into_iter().filter(|t| !is_reserved(t)).collect();
    if kept.is_empty() {
        return ConnectionRewrite::Remove;
    }
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(value) => ConnectionRewrite::Replace(value),
        Err(_) => ConnectionRewrite::Remove,
    }
}

/// Which peers may tell the gateway who the client is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.networks.iter().any(|network| network.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) are their IPv4 selves.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// `ip` as `IpAddr`'s `Display` writes it. An IPv4 address, the usual case, is
/// written digit by digit: the formatter's four padded integers cost ten times as much.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// What the gateway knows about where a request came from, read from the connection
/// and, only for trusted peers, from the headers those peers set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedFor {
    /// The address the client connected from, as far as the gateway can verify.
    pub client_ip: IpAddr,
    /// The `X-Forwarded-For` chain to send on, ending with the connecting peer.
    chain: String,
    /// `client_ip` as text, when it is not the whole chain.
    client_text: Option<String>,
    /// A request id a trusted peer already assigned, if any.
    upstream_request_id: Option<String>,
}

impl ForwardedFor {
    /// Reads the client address. Must run before [`Strip`], which removes the headers a
    /// trusted proxy set.
    pub fn read(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Self {
        let peer = canonical_ip(peer);
        if !trusted.contains(peer) {
            return Self {
                client_ip: peer,
                chain: ip_text(peer),
                client_text: None,
                upstream_request_id: None,
            };
        }
        let hops: Vec<IpAddr> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical_ip)
            .collect();
        // The client is the right-most address not added by a trusted proxy; anything
        // left of it is the client's own claim.
        let client_ip = hops
            .iter()
            .rev()
            .copied()
            .find(|hop| !trusted.contains(*hop))
            .unwrap_or(peer);
        let mut chain: Vec<String> = hops.iter().copied().map(ip_text).collect();
        chain.push(ip_text(peer));
        let upstream_request_id = headers
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_plausible_request_id(id))
            .map(str::to_owned);
        Self {
            client_ip,
            chain: chain.join(", "),
            client_text: Some(ip_text(client_ip)),
            upstream_request_id,
        }
    }

    /// The client's address as text, for logs and audit records.
    pub fn client_text(&self) -> &str {
        self.client_text.as_deref().unwrap_or(&self.chain)
    }

    /// A request id a trusted proxy assigned, to keep one id across the hops.
    pub fn upstream_request_id(&self) -> Option<&str> {
        self.upstream_request_id.as_deref()
    }

    /// The forwarding headers the backend receives; set after [`Strip`] ran.
    pub fn headers(&self, host: Option<&str>, request_id: &str) -> Vec<(HeaderName, HeaderValue)> {
        let text = |text: &str| HeaderValue::from_str(text).ok();
        let set = [
            Some((X_FORWARDED_FOR, text(&self.chain))),
            // The gateway terminates TLS, so the client's scheme is always https.
            Some((X_FORWARDED_PROTO, Some(HeaderValue::from_static("https")))),
            Some((REQUEST_ID, text(request_id))),
            host.map(|host| (X_FORWARDED_HOST, text(host))),
        ];
        set.into_iter()
            .flatten()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect()
    }
}

/// Request ids from trusted peers are echoed into logs and headers: keep them short and plain.
fn is_plausible_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The `Cookie` header a backend gets: the request's cookies without the gateway's
/// own (the web login's session and CSRF cookies). `None`: nothing to change.
/// SECURITY: a backend (or its logs) never holds a session id it could replay.
pub fn cookies_for_backend<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Option<String>> {
    let mut changed = false;
    let mut kept = Vec::new();
    for value in values {
        let text = String::from_utf8_lossy(value);
        for pair in text.split(';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let name = pair.split_once('=').map_or(pair, |(name, _)| name).trim();
            if name == crate::login::SESSION_COOKIE || name == crate::login::CSRF_COOKIE {
                changed = true;
            } else {
                kept.push(pair.to_owned());
            }
        }
    }
    changed.then(|| (!kept.is_empty()).then(|| kept.join("; ")))
}

/// A fresh request id.
pub fn new_request_id() -> String {
    // Written straight into a buffer: `to_string` goes through the formatter.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fresh_lowercase_uuids() {
        let id = new_request_id();
        let parsed = uuid::Uuid::parse_str(&id).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(
            id,
            parsed.hyphenated().to_string(),
            "hyphenated, lower case"
        );
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn gateway_cookies_never_reach_the_backend() {
        let values: [&[u8]; 2] = [
            b"theme=dark; __Host-portcullis-session=abc",
            b"__Host-portcullis-csrf=xyz; lang=nl",
        ];
        assert_eq!(
            cookies_for_backend(values.into_iter()),
            Some(Some("theme=dark; lang=nl".to_owned()))
        );
        let only_ours: [&[u8]; 1] = [b"__Host-portcullis-session=abc"];
        assert_eq!(cookies_for_backend(only_ours.into_iter()), Some(None));
        let none_of_ours: [&[u8]; 1] = [b"theme=dark"];
        assert_eq!(cookies_for_backend(none_of_ours.into_iter()), None);
    }

    proptest::proptest! {
        #[test]
        fn address_text_is_what_display_writes(v4 in proptest::prelude::any::<[u8; 4]>(),
                                               v6 in proptest::prelude::any::<[u16; 8]>()) {
            let v4 = IpAddr::from(v4);
            proptest::prop_assert_eq!(ip_text(v4), v4.to_string());
            let v6 = IpAddr::from(v6);
            proptest::prop_assert_eq!(ip_text(v6), v6.to_string());
        }
    }

    #[test]
    fn address_text_covers_every_octet_width() {
        for (octets, text) in [
            ([0, 0, 0, 0], "0.0.0.0"),
            ([9, 10, 99, 100], "9.10.99.100"),
            ([255, 200, 109, 1], "255.200.109.1"),
        ] {
            assert_eq!(ip_text(IpAddr::from(octets)), text);
        }
    }

    #[test]
    fn forwarding_headers_name_the_host_only_when_known() {
        let client = ForwardedFor::read(
            "192.0.2.7".parse().expect("ip"),
            &HeaderMap::new(),
            &TrustedProxies::new(Vec::new()),
        );
        let names = |host| {
            client
                .headers(host, "id-1")
                .into_iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().expect("text")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Some("example.org")),
            [
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: https",
                "x-request-id: id-1",
                "x-forwarded-host: example.org"
            ]
        );
        assert_eq!(names(None).len(), 3);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn identity_header_variants_are_reserved() {
        for name in [
            "X-Portcullis-User-Id",
            "x-portcullis-user-id",
            "X_PORTCULLIS_USER_ID",
            "x.portcullis.roles",
            "X-Portcullis_Account-Id",
            "X-Forwarded-For",
            "x_forwarded_host",
            "X-Forwarded-Prefix",
            "Forwarded",
            "X-Real-IP",
            "x_real_ip",
            "X-Original-URL",
            "X-Rewrite-Url",
            "X-HTTP-Method-Override",
            "X-Request-Id",
        ] {
            assert!(is_reserved(name), "{name} must be reserved");
        }
        for name in ["Authorization", "Content-Type", "X-Portcullisx", "Accept"] {
            assert!(!is_reserved(name), "{name} must pass");
        }
    }

    #[test]
    fn strip_removes_reserved_and_keeps_the_rest() {
        let mut map = headers(&[
            ("x-portcullis-user-id", "1"),
            ("x_forwarded_for", "6.6.6.6"),
            ("accept", "text/html"),
            ("connection", "close, X-Portcullis-User-Id, x-keep"),
        ]);
        let plan = Strip::plan(&map);
        assert_eq!(plan.remove.len(), 2);
        plan.apply(&mut map);
        assert!(map.get("x-portcullis-user-id").is_none());
        assert!(map.get("x_forwarded_for").is_none());
        assert_eq!(
            map.get("accept").map(|v| v.as_bytes()),
            Some(&b"text/html"[..])
        );
        assert_eq!(
            map.get(CONNECTION).map(|v| v.as_bytes()),
            Some(&b"close, x-keep"[..])
        );
    }

    #[test]
    fn connection_with_only_reserved_nominations_is_removed() {
        let map = headers(&[("connection", "X-Forwarded-For")]);
        assert_eq!(Strip::plan(&map).connection, ConnectionRewrite::Remove);
        let map = headers(&[("connection", "keep-alive")]);
        assert!(Strip::plan(&map).is_empty());
    }

    #[test]
    fn untrusted_peer_cannot_claim_another_address() {
        let map = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-request-id", "abc")]);
        let seen = ForwardedFor::read(
            "10.0.0.9".parse().expect("ip"),
            &map,
            &TrustedProxies::default(),
        );
        assert_eq!(seen.client_ip, "10.0.0.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(seen.client_text(), "10.0.0.9");
        assert_eq!(seen.upstream_request_id(), None);
        let out: HeaderMap = seen
            .headers(Some("example.com"), "rid")
            .into_iter()
            .collect();
        assert_eq!(
            out.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.0.0.9"[..])
        );
        assert_eq!(
            out.get(&X_FORWARDED_PROTO).map(|v| v.as_bytes()),
            Some(&b"https"[..])
        );
        assert_eq!(
            out.get(&X_FORWARDED_HOST).map(|v| v.as_bytes()),
            Some(&b"example.com"[..])
        );
        assert_eq!(
            out.get(&REQUEST_ID).map(|v| v.as_bytes()),
            Some(&b"rid"[..])
        );
    }

    #[test]
    fn trusted_peer_chain_yields_rightmost_untrusted_client() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("net")]);
        let map = headers(&[
            ("x-forwarded-for", "9.9.9.9, 1.2.3.4, 10.1.1.1"),
            ("x-request-id", "lb-42"),
        ]);
        let seen = ForwardedFor::read("::ffff:10.0.0.2".parse().expect("ip"), &map, &trusted);
        assert_eq!(seen.client_ip, "1.2.3.4".parse::<IpAddr>().expect("ip"));
        assert_eq!(seen.client_text(), "1.2.3.4");
        assert_eq!(seen.upstream_request_id(), Some("lb-42"));
        let out: HeaderMap = seen.headers(None, "lb-42").into_iter().collect();
        assert_eq!(
            out.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"9.9.9.9, 1.2.3.4, 10.1.1.1, 10.0.0.2"[..])
        );
    }

    #[test]
    fn implausible_request_ids_from_trusted_peers_are_replaced() {
        let trusted = TrustedProxies::new(vec!["127.0.0.0/8".parse().expect("net")]);
        let map = headers(&[("x-request-id", "has space")]);
        let seen = ForwardedFor::read("127.0.0.1".parse().expect("ip"), &map, &trusted);
        assert_eq!(seen.upstream_request_id(), None);
    }
}
