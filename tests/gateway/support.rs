//! The harness: the real gateway in-process, an echo backend, and TLS clients.
//!
//! Every test gets fresh certificates, loopback ports reserved for it (see
//! [`free_ports`]) and its own gateway (`Server::run` on a thread), stopped when the
//! handle drops.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::dev_certs::DevCertificates;
use portcullis::server::{Extras, ShutdownSwitch, Stop};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Generous bound for anything that should happen promptly on loopback.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback port that refuses connections for as long as this value lives: bound,
/// never listening, so no other test can take it over.
pub struct ClosedPort {
    pub address: SocketAddr,
    _socket: socket2::Socket,
}

impl ClosedPort {
    pub fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        let address = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        Self {
            address,
            _socket: socket,
        }
    }
}

/// `N` distinct loopback ports for listeners a test starts later (gateways, Redis,
/// PostgreSQL), each reserved for the rest of this test process.
///
/// A port taken with `bind(0)` and released would race: until the test's server binds
/// it, the kernel may hand the same port to a `bind(0)` of a test running beside it (a
/// backend, another reservation) or use it as a connection's source port. So the ports
/// come from outside the kernel's ephemeral range, which `bind(0)` and `connect` never
/// use, and each is held as a UDP socket of the same number: UDP and TCP ports are
/// separate spaces, so the hold keeps every other test process (which all reserve the
/// same way) off the port while the test's own server binds it over TCP.
pub fn free_ports<const N: usize>() -> [SocketAddr; N] {
    std::array::from_fn(|_| reserve_port())
}

/// The UDP sockets that hold this process's reserved ports.
static RESERVED: Mutex<Vec<std::net::UdpSocket>> = Mutex::new(Vec::new());

fn reserve_port() -> SocketAddr {
    use std::hash::BuildHasher;
    let candidates = reservable_ports();
    let count = candidates.iter().map(|range| range.len()).sum::<usize>();
    assert!(count > 0, "no loopback ports to reserve");
    // Processes started together begin their search at different places.
    let start = std::hash::RandomState::new().hash_one(std::process::id()) as usize % count;
    let ports = candidates.into_iter().flatten();
    for port in ports.clone().skip(start).chain(ports.take(start)) {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let Ok(hold) = std::net::UdpSocket::bind(address) else {
            continue;
        };
        // Free over TCP too: nothing outside the tests (or a test process that held it
        // and has exited, leaving a server behind) is listening there.
        if StdListener::bind(address).is_err() {
            continue;
        }
        RESERVED.lock().expect("reserved ports").push(hold);
        return address;
    }
    panic!("every loopback port outside the ephemeral range is in use");
}

/// The unprivileged ports outside `net.ipv4.ip_local_port_range`, or, where that range
/// covers them all, every unprivileged port (reserving then still keeps tests off each
/// other's ports, though not off the kernel's ephemeral choices).
fn reservable_ports() -> Vec<std::ops::RangeInclusive<u16>> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32768, 60999));
    let outside: Vec<_> = [
        high.checked_add(1).map(|first| first..=u16::MAX),
        low.checked_sub(1).map(|last| 10_000..=last),
    ]
    .into_iter()
    .flatten()
    .filter(|range| !range.is_empty())
    .collect();
    if outside.is_empty() {
        vec![1024..=u16::MAX]
    } else {
        outside
    }
}

/// A request as the backend received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query exactly as they arrived.
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// A loopback listener served on a thread and runtime of its own: each accepted
/// connection is handed to `serve` in a task. Stops when dropped.
pub struct LoopbackServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl LoopbackServer {
    pub fn start<F, Serving>(serve: F) -> Self
    where
        F: Fn(TcpStream) -> Serving + Send + 'static,
        Serving: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        if let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(serve(stream));
                        }
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            address,
            stop: Some(stop),
        }
    }
}

/// An HTTP/1.1 backend that records every request and answers `200 {"echo":true}`,
/// after `delay` if set. Runs on its own thread and runtime; stops when dropped.
pub struct EchoBackend {
    pub address: SocketAddr,
    log: RequestLog,
    _server: LoopbackServer,
}

/// What an echo backend received: every request, or (for load) only their number.
#[derive(Clone)]
struct RequestLog {
    requests: Arc<Mutex<VecDeque<Received>>>,
    count: Arc<std::sync::atomic::AtomicU64>,
    keep: bool,
}

impl EchoBackend {
    pub fn start() -> Self {
        Self::start_with_delay(Duration::ZERO)
    }

    pub fn start_with_delay(delay: Duration) -> Self {
        Self::spawn(delay, None, true)
    }

    /// An echo backend that only counts requests (for load, where keeping each
    /// would grow without bound).
    pub fn start_counting() -> Self {
        Self::spawn(Duration::ZERO, None, false)
    }

    /// An echo backend behind TLS with the given server certificate.
    pub fn start_tls(certificates: &DevCertificates) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let chain =
            rustls::pki_types::CertificateDer::pem_slice_iter(certificates.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(certificates.key_pem.as_bytes())
            .expect("key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        Self::spawn(
            Duration::ZERO,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            true,
        )
    }

    fn spawn(delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>, keep: bool) -> Self {
        let log = RequestLog {
            requests: Arc::default(),
            count: Arc::default(),
            keep,
        };
        let server_log = log.clone();
        let server = LoopbackServer::start(move |stream| {
            let log = server_log.clone();
            let tls = tls.clone();
            async move {
                match tls {
                    None => serve_connection(stream, log, delay).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_connection(stream, log, delay).await;
                        }
                    }
                }
            }
        });
        Self {
            address: server.address,
            log,
            _server: server,
        }
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.log
            .requests
            .lock()
            .expect("log")
            .iter()
            .cloned()
            .collect()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> u64 {
        self.log.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The only request received; fails the test otherwise.
    pub fn only(&self) -> Received {
        let all = self.received();
        assert_eq!(all.len(), 1, "backend saw {} requests: {all:#?}", all.len());
        all.into_iter().next().expect("one")
    }
}

async fn serve_connection<S>(stream: S, log: RequestLog, delay: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let target = parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_default();
            log.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if log.keep {
                log.requests.lock().expect("log").push_back(Received {
                    method: parts.method.to_string(),
                    target,
                    headers: parts.headers,
                    body,
                });
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(br#"{"echo":true}"#)))
                    .expect("response"),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The loopback addresses a test gateway listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

/// A running gateway; stops when dropped.
pub struct TestGateway {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub ca_pem: String,
    /// Where this gateway writes its audit records.
    pub audit: std::path::PathBuf,
    /// Its configuration file (for the admin CLI).
    pub config: std::path::PathBuf,
    switch: ShutdownSwitch,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// The configuration around `body` (backends and routes): listeners and certificates.
pub fn config_text(ports: Ports, dir: &std::path::Path, body: &str) -> String {
    let Ports { https, http, admin } = ports;
    format!(
        r#"[listen]
https = ["{https}"]
http = ["{http}"]

[admin]
listen = ["{admin}"]

[audit]
path = "{audit}"

[tls]
certificate = "{cert}"
private_key = "{key}"

[server]
threads = 1
grace_period = "1s"
shutdown_timeout = "1s"

{body}
"#,
        audit = dir.join("audit.jsonl").display(),
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

impl TestGateway {
    /// Starts a gateway with the given backends and routes (TOML).
    pub fn start(body: &str) -> Self {
        Self::start_with(|ports, dir| config_text(ports, dir, body))
    }

    /// Starts a gateway whose whole configuration `make` writes.
    pub fn start_with(make: impl FnOnce(Ports, &std::path::Path) -> String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certificates = DevCertificates::generate().expect("certificates");
        std::fs::write(dir.path().join("cert.pem"), &certificates.chain_pem).expect("write");
        std::fs::write(dir.path().join("key.pem"), &certificates.key_pem).expect("write");
        let [https, http, admin] = free_ports();
        let ports = Ports { https, http, admin };
        let text = make(ports, dir.path());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let loaded = portcullis::config::parse(&config_path, text, Vec::new());
        let Some(config) = loaded.config else {
            panic!(
                "test configuration is invalid:\n{}",
                loaded.report.render(false)
            );
        };
        let server = portcullis::server::build(&config, &Extras::default()).expect("build gateway");
        let switch = ShutdownSwitch::new();
        let thread_switch = switch.clone();
        let thread = std::thread::spawn(move || server.run(thread_switch.run_args()));
        wait_until_listening(ports.https);
        wait_until_listening(ports.http);
        wait_until_listening(ports.admin);
        Self {
            https: ports.https,
            http: ports.http,
            admin: ports.admin,
            audit: dir.path().join("audit.jsonl"),
            config: config_path,
            ca_pem: certificates.ca_pem,
            switch,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Graceful stop: returns once the server thread has exited.
    pub fn stop_gracefully(mut self) -> Duration {
        let started = Instant::now();
        self.switch.stop(Stop::Graceful);
        if let Some(thread) = self.thread.take() {
            join_within(thread, DEADLINE);
        }
        started.elapsed()
    }

    pub fn tls(&self) -> TlsClient {
        TlsClient::new(self.https, &self.ca_pem)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.switch.stop(Stop::Fast);
        if let Some(thread) = self.thread.take() {
            join_within(thread, DEADLINE);
        }
    }
}

fn join_within(thread: JoinHandle<()>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "gateway did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = thread.join();
}

/// A configuration for a gateway process, in a temporary directory of its own with
/// fresh certificates, the test token secret in `token.key` and free ports for the
/// https and admin listeners. `body` follows `[listen]`, `[admin]` and `[tls]`.
pub struct ProcessConfig {
    pub dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
    pub https: SocketAddr,
    pub ca_pem: String,
}

impl ProcessConfig {
    pub fn write(body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certificates = DevCertificates::generate().expect("certificates");
        let paths = certificates.write(dir.path()).expect("write certificates");
        std::fs::write(dir.path().join("token.key"), crate::users::TOKEN_SECRET).expect("key");
        let [https, admin] = free_ports();
        let path = dir.path().join("portcullis.toml");
        let text = format!(
            "[listen]\nhttps = [\"{https}\"]\n\n[admin]\nlisten = [\"{admin}\"]\n\n\
             [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n{body}",
            paths.certificate.display(),
            paths.private_key.display(),
        );
        std::fs::write(&path, text).expect("config");
        Self {
            dir,
            path,
            https,
            ca_pem: certificates.ca_pem,
        }
    }

    /// Starts the gateway binary on this configuration, logging to `gateway.log`.
    pub fn start(&self) -> GatewayProcess {
        GatewayProcess::start(&self.path, &self.dir.path().join("gateway.log"), self.https)
    }
}

/// The gateway binary in a process of its own, for what must be measured apart from
/// the test (memory, open files) or counted against limits of its own. Killed when
/// dropped.
pub struct GatewayProcess {
    child: std::process::Child,
}

impl GatewayProcess {
    /// Runs `portcullis run --config config` with its output in `log`, and waits
    /// until `https` listens.
    pub fn start(config: &std::path::Path, log: &std::path::Path, https: SocketAddr) -> Self {
        let running = Self::spawn(config, log);
        wait_until_listening(https);
        running
    }

    /// Runs `portcullis run --config config` with its output in `log`, and returns
    /// at once.
    pub fn spawn(config: &std::path::Path, log: &std::path::Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start gateway");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn proc(&self, name: &str) -> std::path::PathBuf {
        std::path::Path::new("/proc")
            .join(self.child.id().to_string())
            .join(name)
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(self.proc("status")).expect("/proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Open file descriptors (sockets, files, the runtime's own).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(self.proc("fd"))
            .expect("/proc fd")
            .count()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until_listening(address: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A response as a client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// `h2` or `http/1.1`, as negotiated.
    pub protocol: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TLS client trusting the test CA.
pub struct TlsClient {
    address: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
}

impl TlsClient {
    pub fn new(address: SocketAddr, ca_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(certificate.expect("ca pem")).expect("add ca");
        }
        Self {
            address,
            roots: Arc::new(roots),
        }
    }

    /// Whether a TLS handshake with the gateway succeeds, trusting only this client's CA.
    pub async fn handshake(&self) -> Result<(), String> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.address)
            .await
            .map_err(|e| e.to_string())?;
        TlsConnector::from(Arc::new(config))
            .connect(
                ServerName::try_from("localhost").map_err(|e| e.to_string())?,
                tcp,
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn connect(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.try_connect(alpn)
            .await
            .expect("connect and TLS handshake")
    }

    /// A TLS connection offering `alpn`; the error when connecting or the handshake
    /// fails.
    pub async fn try_connect(
        &self,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.address).await?;
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
    }

    /// A TLS connection speaking HTTP/1.1 (by ALPN), for tests that write raw bytes.
    pub async fn connect_http1(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.connect(&[b"http/1.1"]).await
    }

    /// Sends raw bytes (one HTTP/1.1 request, which should say `Connection: close`) and
    /// reads until the gateway closes.
    pub async fn raw(&self, request: &[u8]) -> Reply {
        let mut stream = self.connect(&[b"http/1.1"]).await;
        stream.write_all(request).await.expect("write");
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes)).await;
        assert!(read.is_ok(), "gateway did not close the connection");
        parse_http1(&bytes, "http/1.1")
    }

    /// `GET target` with `Host: localhost` and extra header lines, over HTTP/1.1.
    pub async fn get(&self, target: &str, extra_headers: &str) -> Reply {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n"
        );
        self.raw(request.as_bytes()).await
    }

    /// `POST target` with a body, over HTTP/1.1.
    pub async fn post(&self, target: &str, content_type: &str, body: &str) -> Reply {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.raw(request.as_bytes()).await
    }

    /// A request over HTTP/2 (ALPN h2) with hyper.
    pub async fn h2(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        let stream = self.connect(&[b"h2"]).await;
        let negotiated = stream
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        assert_eq!(negotiated.as_deref(), Some("h2"), "gateway must offer h2");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{target}", self.address.port()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::new())).expect("request"))
            .await
            .expect("h2 response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
            protocol: "h2".into(),
        }
    }
}

/// Parses a complete HTTP/1.1 response (content-length or close-delimited body).
pub fn parse_http1(bytes: &[u8], protocol: &str) -> Reply {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(name.trim().as_bytes()).expect("name"),
                http::HeaderValue::from_str(value.trim()).expect("value"),
            );
        }
    }
    let rest = &bytes[end + 4..];
    let body = match headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        Some(length) => Bytes::copy_from_slice(&rest[..length.min(rest.len())]),
        None => Bytes::copy_from_slice(rest),
    };
    Reply {
        status,
        headers,
        body,
        protocol: protocol.into(),
    }
}

/// A backend section plus one public catch-all route to it.
pub fn public_catch_all(backend: SocketAddr) -> String {
    format!(
        r#"[backends.echo]
address = "{backend}"
connect_timeout = "500ms"
read_timeout = "2s"

[[route]]
id = "all"
path_prefix = "/"
backend = "echo"
auth = "public"
"#
    )
}

/// A plain-HTTP GET to the admin listener.
pub async fn admin_get(gateway: &TestGateway, request: &str) -> Reply {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(gateway.admin)
        .await
        .expect("connect admin");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes))
        .await
        .expect("admin closes")
        .expect("read");
    parse_http1(&bytes, "http/1.1")
}

/// The value of one metric sample (exact name and labels) in the admin exposition.
pub async fn metric(gateway: &TestGateway, sample: &str) -> Option<f64> {
    let reply = admin_get(
        gateway,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    reply
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn reserved_ports_are_held_from_other_tests_and_never_handed_out_by_the_kernel() {
    let [first, second] = free_ports();
    assert_ne!(first, second);
    for address in [first, second] {
        // Another test process, reserving the same way, is kept off the port...
        assert!(std::net::UdpSocket::bind(address).is_err());
        // ...while the test's own server can listen there.
        drop(StdListener::bind(address).expect("the reserved port takes a listener"));
    }
    // Ports the kernel chooses (a backend's bind(0), a connection's source port) are
    // never a reserved one.
    let chosen: Vec<StdListener> = (0..500)
        .map(|_| StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"))
        .collect();
    for listener in &chosen {
        let port = listener.local_addr().expect("addr").port();
        assert!(port != first.port() && port != second.port());
    }
}
