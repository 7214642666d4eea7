//! Everything a request is decided with, swapped atomically as one value.
//!
//! The gateway holds one `ArcSwap<Snapshot>`; each request loads it once in `new_ctx`
//! and keeps that `Arc` to the end, so a reload never mixes two configurations in one
//! decision (CONVENTIONS 8).

use std::sync::Arc;

use http::HeaderValue;
use pingora::prelude::HttpPeer;
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;

use crate::config::{Backend, Config, TokenInRequest};
use crate::forwarding::{IdentitySigner, TrustedProxies};
use crate::policy::rules::RuleSet;
use crate::rate_limit::LimitClass;
use crate::route::{ConfigMap, RouteTable};
use crate::tls::{TlsError, backend_ca};

pub struct Snapshot {
    routes: RouteTable,
    /// Ready-made peers, cloned per request.
    peers: ConfigMap<Arc<str>, HttpPeer>,
    hsts: HeaderValue,
    trusted_proxies: TrustedProxies,
    /// Every login attempt counts against these.
    login_limits: Vec<Arc<LimitClass>>,
    /// Failed login attempts count against these, then lock out.
    login_failures: Vec<Arc<LimitClass>>,
    /// Every second-factor code tried (and mailed) on the web login.
    second_factor: Vec<Arc<LimitClass>>,
    /// How long a lockout lasts; zero: none.
    lockout: std::time::Duration,
    /// In front of FlexMeasures: what happens to tokens outside `Authorization`, and
    /// the largest JSON body looked into.
    token_guard: Option<(TokenInRequest, usize)>,
    signer: Option<IdentitySigner>,
    /// Policy rules; when set, they replace `routes`.
    rules: Option<Arc<RuleSet>>,
    /// `[server] client_idle_timeout` in seconds, for HTTP/1.1 keep-alive.
    client_idle_seconds: u64,
}

impl Snapshot {
    /// Builds a snapshot from a checked configuration (backend CA files are read here).
    pub fn build(config: &Config) -> Result<Self, TlsError> {
        let mut peers = ConfigMap::default();
        for backend in config.backends.values() {
            peers.insert(backend.name.clone(), peer(backend)?);
        }
        Ok(Self {
            routes: config.routes.clone(),
            peers,
            hsts: HeaderValue::from_str(&config.hsts.header_value())
                .unwrap_or_else(|_| HeaderValue::from_static("max-age=31536000")),
            trusted_proxies: config.server.trusted_proxies.clone(),
            login_limits: config.rate_limits.login.iter().cloned().collect(),
            login_failures: config.rate_limits.login_failures.iter().cloned().collect(),
            second_factor: config.rate_limits.second_factor.iter().cloned().collect(),
            lockout: config.rate_limits.lockout,
            token_guard: config
                .flexmeasures
                .as_ref()
                .map(|fm| (fm.auth_token_in_request, fm.max_json_body)),
            rules: config.rules.clone(),
            client_idle_seconds: config.server.client_idle_timeout.as_secs().max(1),
            signer: config
                .identity_headers
                .signing_secret
                .as_ref()
                .map(|secret| IdentitySigner::new(secret.expose())),
        })
    }

    pub fn rules(&self) -> Option<&RuleSet> {
        self.rules.as_deref()
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted_proxies
    }

    pub fn login_limits(&self) -> &[Arc<LimitClass>] {
        &self.login_limits
    }

    pub fn login_failures(&self) -> &[Arc<LimitClass>] {
        &self.login_failures
    }

    pub fn second_factor(&self) -> &[Arc<LimitClass>] {
        &self.second_factor
    }

    pub fn lockout(&self) -> std::time::Duration {
        self.lockout
    }

    pub fn token_guard(&self) -> Option<(TokenInRequest, usize)> {
        self.token_guard
    }

    /// Signs identity headers, when configured.
    pub fn signer(&self) -> Option<&IdentitySigner> {
        self.signer.as_ref()
    }

    pub fn hsts(&self) -> &HeaderValue {
        &self.hsts
    }

    pub fn client_idle_seconds(&self) -> u64 {
        self.client_idle_seconds
    }

    /// A fresh peer for the named backend.
    pub fn peer(&self, backend: &str) -> Option<Box<HttpPeer>> {
        self.peers.get(backend).cloned().map(Box::new)
    }
}

fn peer(backend: &Backend) -> Result<HttpPeer, TlsError> {
    let (tls, sni) = match &backend.tls {
        Some(tls) => (true, tls.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(backend.address, tls, sni);
    let options = &mut peer.options;
    options.connection_timeout = Some(backend.connect_timeout);
    // TCP connect plus TLS handshake.
    options.total_connection_timeout = Some(backend.connect_timeout * 2);
    options.read_timeout = Some(backend.read_timeout);
    options.write_timeout = Some(backend.write_timeout);
    options.idle_timeout = Some(backend.idle_timeout);
    // Hop-by-hop headers and `Connection` nominations are removed before the gateway
    // sets its own (pingora's standard policy), so they cannot remove ours.
    options.http_upstream_request_policy = HttpUpstreamRequestPolicy::standard();
    if let Some(tls) = &backend.tls {
        options.verify_cert = tls.verify_certificate;
        options.verify_hostname = tls.verify_certificate;
        if let Some(ca) = &tls.ca {
            options.ca = Some(backend_ca(ca)?);
        }
    }
    Ok(peer)
}
