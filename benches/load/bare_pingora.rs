//! A bare pingora reverse proxy: the baseline `benches/load/run` compares Portcullis
//! with. Same pingora, rustls and allocator as the gateway; TLS with HTTP/1.1 and
//! h2, one backend, and no logic of its own.
//!
//! `cargo build --release --example bare_pingora`, then
//! `bare_pingora LISTEN BACKEND CERTIFICATE KEY THREADS`.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark tool that cannot start has nothing to measure"
)]

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 6,
        "usage: bare_pingora LISTEN BACKEND CERTIFICATE KEY THREADS"
    );
    let conf = ServerConf {
        threads: args[5].parse().expect("THREADS is a number"),
        upstream_keepalive_pool_size: 128,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            backend: args[2].clone(),
        },
    );
    let mut tls = TlsSettings::intermediate(&args[3], &args[4]).expect("certificate and key");
    tls.enable_h2();
    proxy.add_tls_with_settings(&args[1], None, tls);
    server.add_service(proxy);
    server.run_forever();
}
