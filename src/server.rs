//! Builds the pingora server: TLS listeners running the proxy, plain listeners running
//! the redirect, and (for `portcullis demo`) the demo backend.
//!
//! Everything that can fail is checked before pingora starts, because pingora panics
//! on a certificate it cannot load or an address it cannot bind.

mod admin;
mod demo_backend;
mod policy_reload;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::apps::http_app::HttpServer;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use tokio::sync::watch;

pub use admin::Admin;
pub use demo_backend::DemoBackend;

use crate::audit::{Audit, AuditWriter};
use crate::config::Config;
use crate::identity::Authenticator;
use crate::login::{LoginGuard, WebLogin};
use crate::metrics::Metrics;
use crate::proxy::{Gateway, Snapshot};
use crate::rate_limit::RateLimiter;
use crate::redirect::Redirect;
use crate::tls::{
    CertificatePair, CertificateReloader, CertificateStore, TlsError, listener_settings,
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS certificate: {0}")]
    Certificate(#[from] TlsError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::StartError),
    #[error("rate limits: {0}")]
    RateLimits(#[from] crate::store::StoreError),
    #[error("web login: {0}")]
    WebLogin(#[from] crate::login::StartError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Extra services beside the gateway itself.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Serve the demo backend on this address.
    pub demo_backend: Option<SocketAddr>,
}

/// Builds the server for `config`. Binds nothing yet; fails on anything that would
/// make pingora panic later.
pub fn build(config: &Config, extras: &Extras) -> Result<Server, StartError> {
    // Process-wide and idempotent; pingora's rustls build expects it.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut addresses: Vec<SocketAddr> = config.listen.https.clone();
    addresses.extend(&config.listen.http);
    addresses.extend(&config.admin);
    addresses.extend(extras.demo_backend);
    for address in addresses {
        check_bindable(address)?;
    }

    let pair = CertificatePair::read(&config.tls.certificate, &config.tls.private_key)?;
    let certificates = Arc::new(CertificateStore::new(&pair));
    let metrics = Arc::new(Metrics::new()?);
    let (audit, audit_writer) = Audit::channel(
        config.audit.capacity,
        config.audit.target.clone(),
        metrics.clone(),
    );
    let audit = Arc::new(audit);
    metrics.certificate_served(pair.not_after.unix_timestamp());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(config)?));
    let authenticator = Authenticator::start(config, metrics.clone())?;
    let limiter = Arc::new(RateLimiter::new(
        &config.rate_limits,
        config.redis.as_ref(),
        metrics.clone(),
    )?);
    let guard = authenticator.clone().map(|authenticator| {
        Arc::new(LoginGuard::new(
            limiter.clone(),
            authenticator,
            metrics.clone(),
            audit.clone(),
        ))
    });
    let web_login = WebLogin::start(
        config,
        authenticator.clone(),
        guard.clone(),
        metrics.clone(),
        audit.clone(),
    )?
    .map(Arc::new);

    let server_conf = ServerConf {
        threads: config.server.threads,
        // pingora waits the whole grace period after SIGTERM (default 300 s).
        grace_period_seconds: Some(whole_seconds(config.server.grace_period)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds(config.server.shutdown_timeout)),
        upstream_keepalive_pool_size: config.server.keepalive_pool_size,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let mut proxy = http_proxy_service_with_name(
        &conf,
        Gateway::new(
            snapshot.clone(),
            metrics.clone(),
            audit.clone(),
            authenticator.clone(),
            limiter.clone(),
            guard,
            web_login,
        ),
        "portcullis https",
    );
    for address in &config.listen.https {
        proxy.add_tls_with_settings(
            &address.to_string(),
            None,
            listener_settings(certificates.clone())?,
        );
    }
    // HTTP/2 connections without a stream close after the idle timeout, as HTTP/1.1
    // keep-alive does (`Gateway::request_filter`); pingora keeps both forever.
    if let Some(logic) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(config.server.client_idle_timeout);
        logic.server_options = Some(options);
    }
    server.add_service(proxy);

    if !config.listen.http.is_empty() {
        let mut redirect = Service::new(
            "portcullis http redirect".to_owned(),
            HttpServer::new_app(Redirect::new(config.listen.redirect_port)),
        );
        for address in &config.listen.http {
            redirect.add_tcp(&address.to_string());
        }
        server.add_service(redirect);
    }

    if !config.tls.reload_interval.is_zero() {
        server.add_service(background_service(
            "certificate reload",
            CertificateReloader::new(
                certificates.clone(),
                config.tls.certificate.clone(),
                config.tls.private_key.clone(),
                config.tls.reload_interval,
                metrics.clone(),
                audit.clone(),
            ),
        ));
    }

    if let Some(reloader) =
        policy_reload::PolicyReloader::new(config, snapshot.clone(), metrics.clone(), audit.clone())
    {
        if config.rules.is_some() {
            metrics.policy_reload(true);
        }
        server.add_service(background_service("policy reload", reloader));
    } else {
        server.add_service(background_service(
            "reload signal",
            policy_reload::NothingToReload,
        ));
    }

    server.add_service(background_service(
        "rate-limit housekeeping",
        Housekeeping {
            limiter,
            interval: config.rate_limits.housekeeping_interval,
        },
    ));

    if let (Some(authenticator), Some(directory)) = (&authenticator, &config.directory) {
        server.add_service(background_service(
            "admin event relay",
            AdminEventRelay {
                authenticator: authenticator.clone(),
                audit: audit.clone(),
                interval: directory.change_poll,
            },
        ));
    }

    server.add_service(background_service(
        "audit writer",
        AuditService {
            writer: std::sync::Mutex::new(Some(audit_writer)),
        },
    ));

    if !config.admin.is_empty() {
        let mut admin = Service::new(
            "portcullis admin".to_owned(),
            HttpServer::new_app(Admin::new(metrics, authenticator)),
        );
        for address in &config.admin {
            admin.add_tcp(&address.to_string());
        }
        server.add_service(admin);
    }

    if let Some(address) = extras.demo_backend {
        let mut demo = Service::new(
            "portcullis demo backend".to_owned(),
            HttpServer::new_app(DemoBackend),
        );
        demo.add_tcp(&address.to_string());
        server.add_service(demo);
    }

    tracing::info!(
        https = ?config.listen.https,
        http = ?config.listen.http,
        admin = ?config.admin,
        routes = config.routes.len(),
        backends = config.backends.len(),
        certificate_expires = %pair.not_after,
        "gateway configured"
    );
    Ok(server)
}

/// Drops rate-limit keys whose budgets refilled, so key memory stays bounded.
struct Housekeeping {
    limiter: Arc<RateLimiter>,
    interval: Duration,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let limiter = self.limiter.clone();
                    let keys = tokio::task::spawn_blocking(move || limiter.housekeep()).await;
                    tracing::debug!(keys = keys.unwrap_or_default(), "rate-limit keys after housekeeping");
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Copies changes made with admin commands from the directory into the audit stream,
/// every `[directory] change_poll`. Each event is taken by one instance only.
struct AdminEventRelay {
    authenticator: Arc<Authenticator>,
    audit: Arc<Audit>,
    interval: Duration,
}

impl AdminEventRelay {
    const BATCH: i64 = 100;

    /// Relays everything waiting; `Err` when the directory cannot be read.
    async fn relay(&self) -> Result<(), crate::store::StoreError> {
        loop {
            let events = self.authenticator.take_admin_events(Self::BATCH).await?;
            for event in &events {
                self.audit.admin(event);
            }
            if events.len() < usize::try_from(Self::BATCH).unwrap_or(usize::MAX) {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl BackgroundService for AdminEventRelay {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => match self.relay().await {
                    Ok(()) if failing => {
                        tracing::info!("admin events can be read again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        tracing::warn!(%error, "cannot read admin events for the audit; they wait in the directory");
                        failing = true;
                    }
                    Err(_) => {}
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Runs the audit writer's thread until shutdown, then lets it drain. SIGUSR1 has
/// it reopen the file (after `logrotate` moved it).
struct AuditService {
    writer: std::sync::Mutex<Option<AuditWriter>>,
}

#[async_trait]
impl BackgroundService for AuditService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let writer = self.writer.lock().ok().and_then(|mut writer| writer.take());
        let Some(writer) = writer else { return };
        // Claimed before the writer starts: once a record is on disk, SIGUSR1 reopens.
        let mut rotate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
        let running = match writer.start() {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "cannot start the audit writer; audit records are dropped (portcullis_audit_dropped_total)");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = delivered(&mut rotate) => running.reopen(),
            }
        }
        let _ = tokio::task::spawn_blocking(move || running.finish()).await;
    }
}

/// The next delivery of a signal watched with `signal(..).ok()`; never, for one that
/// could not be watched.
async fn delivered(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// pingora binds later and panics if it cannot; find out now, with a clear error.
fn check_bindable(address: SocketAddr) -> Result<(), StartError> {
    TcpListener::bind(address)
        .map(drop)
        .map_err(|source| StartError::Listen { address, source })
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Runs until a signal: SIGTERM or SIGQUIT drain gracefully, SIGINT stops at once.
pub fn run(server: Server) {
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
}

/// Unix signals as pingora shutdown requests. pingora's default maps SIGQUIT to a
/// zero-downtime upgrade, which this gateway does not use; here it drains instead.
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        async fn next(kind: SignalKind) {
            match signal(kind) {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot watch a signal");
                    std::future::pending::<()>().await;
                }
            }
        }
        tokio::select! {
            () = next(SignalKind::terminate()) => ShutdownSignal::GracefulTerminate,
            () = next(SignalKind::quit()) => ShutdownSignal::GracefulTerminate,
            () = next(SignalKind::interrupt()) => {
                tracing::info!("interrupted; stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// Stops a server started with [`ShutdownSwitch::run_args`]: for embedding and tests,
/// where no signal is sent.
#[derive(Clone)]
pub struct ShutdownSwitch {
    sender: Arc<watch::Sender<Option<Stop>>>,
}

/// How a [`ShutdownSwitch`] stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting, let requests finish for the grace period.
    Graceful,
    /// Stop now.
    Fast,
}

impl Default for ShutdownSwitch {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSwitch {
    pub fn new() -> Self {
        Self {
            sender: Arc::new(watch::channel(None).0),
        }
    }

    /// Arguments for `Server::run` that wait for this switch.
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            shutdown_signal: Box::new(SwitchWatch {
                receiver: self.sender.subscribe(),
            }),
        }
    }

    pub fn stop(&self, how: Stop) {
        self.sender.send_replace(Some(how));
    }
}

struct SwitchWatch {
    receiver: watch::Receiver<Option<Stop>>,
}

#[async_trait]
impl ShutdownSignalWatch for SwitchWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut receiver = self.receiver.clone();
        let stop = receiver.wait_for(Option::is_some).await.map(|stop| *stop);
        match stop {
            Ok(Some(Stop::Graceful)) => ShutdownSignal::GracefulTerminate,
            // A dropped switch can never be pressed: stop rather than run forever.
            Ok(Some(Stop::Fast) | None) | Err(_) => ShutdownSignal::FastShutdown,
        }
    }
}
