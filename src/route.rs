//! Second stage of the flow: the canonical target and host pick a [`Route`].
//!
//! A route names the backend that serves it and how callers must authenticate. A request
//! that matches no route is refused with 404 before any backend is contacted.
//!
//! Matching: the most specific host wins (exact name, then the longest `*.suffix`, then
//! `*`); among routes for that host, the longest path prefix wins. A prefix matches
//! whole segments only: `/api` matches `/api` and `/api/x`, never `/apix`. Two routes
//! with the same host and prefix are a configuration error, so the order of routes in
//! the file never changes a decision.

use std::sync::Arc;

/// How a caller must prove who it is to use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may call; no credential is checked.
    Public,
    /// An API access token in `Authorization`.
    Token,
    /// A browser session cookie from the web login.
    Session,
    /// Either of the two.
    TokenOrSession,
}

impl Access {
    pub const NAMES: &'static [&'static str] = &["public", "token", "session", "token-or-session"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "public" => Some(Self::Public),
            "token" => Some(Self::Token),
            "session" => Some(Self::Session),
            "token-or-session" => Some(Self::TokenOrSession),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Token => "token",
            Self::Session => "session",
            Self::TokenOrSession => "token-or-session",
        }
    }
}

/// Which `Host` a route answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// `example.com` (lower case, no port).
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, not the apex.
    Subdomains(String),
}

impl HostPattern {
    /// Parses `*`, `name` or `*.name`; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim().to_ascii_lowercase();
        if raw == "*" {
            return Some(Self::Any);
        }
        if let Some(suffix) = raw.strip_prefix("*.") {
            return is_host_name(suffix).then(|| Self::Subdomains(format!(".{suffix}")));
        }
        is_host_name(&raw).then_some(Self::Exact(raw))
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == host,
            Self::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    /// Higher is more specific.
    pub(crate) fn specificity(&self) -> usize {
        match self {
            Self::Any => 0,
            Self::Subdomains(suffix) => 1 + suffix.len(),
            Self::Exact(_) => usize::MAX,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => f.write_str(name),
            Self::Subdomains(suffix) => write!(f, "*{suffix}"),
        }
    }
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One entry of the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Stable id that appears in logs, audit records and errors.
    pub id: Arc<str>,
    pub host: HostPattern,
    /// Canonical path prefix, starting with `/`, without a trailing `/` unless it is `/`.
    pub path_prefix: String,
    /// Name of the backend that serves the route.
    pub backend: Arc<str>,
    pub access: Access,
    /// Whether a session must have passed the second factor.
    pub mfa: bool,
    /// Limit classes that apply, in order.
    pub rate_limits: Vec<Arc<crate::rate_limit::LimitClass>>,
}

impl Route {
    fn matches_path(&self, path: &str) -> bool {
        if self.path_prefix == "/" {
            return true;
        }
        match path.strip_prefix(self.path_prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// All routes, ordered once so lookups need no sorting.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Sorted by host specificity, then prefix length, both descending.
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table. Duplicate (host, prefix) pairs must have been refused by the
    /// configuration check; if one slips through, the first declared wins.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        Self { routes }
    }

    /// The route for a request, given its host (any case, port allowed) and canonical path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(match_host);
        self.routes.iter().find(|route| {
            let host_matches = match (&route.host, &host) {
                (HostPattern::Any, _) => true,
                (pattern, Some(host)) => pattern.matches(host),
                (_, None) => false,
            };
            host_matches && route.matches_path(path)
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// `example.com:8443` → `example.com`; `[::1]:8443` → `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A map built from configuration alone (routes, rules, backends), looked up with
/// what requests carry. It hashes with foldhash, seeded per process, instead of
/// SipHash: clients choose only the keys looked up, never what is stored, so they
/// cannot lengthen its probe sequences beyond what the configuration built.
pub type ConfigMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The host a request is matched with: without its port, in lower case (copied only
/// when it has capitals, which most clients do not send).
pub fn match_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host_without_port(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// `name[:port]` or `[v6][:port]` with nothing else (RFC 9110 §7.2, RFC 3986 §3.2.2).
pub fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, port)
            }
            None => return false,
        },
        None => match host.rfind(':') {
            Some(colon) => (host.get(..colon), host.get(colon..).unwrap_or_default()),
            None => (Some(host), ""),
        },
    };
    let port_ok = match port {
        "" => true,
        port => port.strip_prefix(':').is_some_and(|digits| {
            !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
        }),
    };
    let name_ok = name.is_none_or(|name| {
        !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    });
    port_ok && name_ok
}

/// Normalizes a configured prefix: must be a canonical path; a trailing `/` is dropped.
pub fn normalize_prefix(prefix: &str) -> Option<String> {
    let canonical = crate::canonical::canonicalize(prefix.as_bytes()).ok()?;
    if canonical.query().is_some() || canonical.path() != prefix {
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, host: &str, prefix: &str) -> Route {
        Route {
            id: id.into(),
            host: HostPattern::parse(host).expect("host"),
            path_prefix: normalize_prefix(prefix).expect("prefix"),
            backend: "b".into(),
            access: Access::Public,
            mfa: true,
            rate_limits: Vec::new(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("root", "*", "/"),
            route("api", "*", "/api"),
            route("api-v3", "*", "/api/v3_0/"),
            route("admin-host", "admin.example.com", "/"),
            route("sub", "*.example.com", "/"),
        ])
    }

    fn found(host: Option<&str>, path: &str) -> Option<String> {
        table().find(host, path).map(|r| r.id.to_string())
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        assert_eq!(
            found(Some("x.org"), "/api/v3_0/sensors"),
            Some("api-v3".into())
        );
        assert_eq!(found(Some("x.org"), "/api/v3_0"), Some("api-v3".into()));
        assert_eq!(found(Some("x.org"), "/api/v2"), Some("api".into()));
        assert_eq!(found(Some("x.org"), "/apix"), Some("root".into()));
        assert_eq!(found(None, "/"), Some("root".into()));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        assert_eq!(
            found(Some("ADMIN.example.com:8443"), "/api"),
            Some("admin-host".into())
        );
        assert_eq!(found(Some("ui.example.com"), "/api"), Some("sub".into()));
        assert_eq!(found(Some("example.com"), "/api"), Some("api".into()));
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let table = RouteTable::new(vec![route("api", "api.example.com", "/api")]);
        assert!(table.find(Some("api.example.com"), "/other").is_none());
        assert!(table.find(Some("evil.com"), "/api").is_none());
        assert!(table.find(None, "/api").is_none());
    }

    #[test]
    fn host_patterns_parse_strictly() {
        assert_eq!(HostPattern::parse("*"), Some(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("Example.COM"),
            Some(HostPattern::Exact("example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.a.b"),
            Some(HostPattern::Subdomains(".a.b".into()))
        );
        assert_eq!(HostPattern::parse("a..b"), None);
        assert_eq!(HostPattern::parse("a.*.b"), None);
        assert_eq!(HostPattern::parse("a:80"), None);
    }

    #[test]
    fn prefixes_must_be_canonical() {
        assert_eq!(normalize_prefix("/api/"), Some("/api".into()));
        assert_eq!(normalize_prefix("/"), Some("/".into()));
        assert_eq!(normalize_prefix("api"), None);
        assert_eq!(normalize_prefix("/a/../b"), None);
        assert_eq!(normalize_prefix("/a%2fb"), None);
        assert_eq!(normalize_prefix("/%61"), None);
    }

    #[test]
    fn hosts_are_names_or_addresses_with_optional_ports() {
        for ok in [
            "example.com",
            "example.com:8443",
            "127.0.0.1",
            "[::1]:443",
            "[::1]",
            "a-b.c",
        ] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "evil.com/x",
            "a@b",
            "[::1",
            "[zz]:1",
            "a:",
            "a:123456",
            "a:x",
            "a_b.c",
            ":80",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn ports_are_removed_from_hosts() {
        assert_eq!(host_without_port("a.b:80"), "a.b");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.b"), "a.b");
    }
}
