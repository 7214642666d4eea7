//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::identity::Authenticator;
use crate::metrics::Metrics;

/// Serves operational endpoints; never proxies.
pub struct Admin {
    metrics: Arc<Metrics>,
    authenticator: Option<Arc<Authenticator>>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, authenticator: Option<Arc<Authenticator>>) -> Self {
        Self {
            metrics,
            authenticator,
        }
    }

    /// Ready: the listeners are up and the directory (and Redis, when configured)
    /// answer, so tokens can be checked.
    async fn readiness(&self) -> (StatusCode, Vec<u8>) {
        let Some(authenticator) = &self.authenticator else {
            return (StatusCode::OK, b"ready\n".to_vec());
        };
        match authenticator.ready().await {
            Ok(()) => (StatusCode::OK, b"ready\n".to_vec()),
            Err(error) => {
                tracing::warn!(%error, "not ready");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"not ready: the directory or redis does not answer\n".to_vec(),
                )
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        let (status, content_type, body) = match (&request.method, request.uri.path()) {
            (&Method::GET, "/metrics") => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            // Alive: this process answers.
            (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (&Method::GET, "/readyz") => {
                let (status, body) = self.readiness().await;
                (status, "text/plain", body)
            }
            (_, "/metrics" | "/healthz" | "/readyz") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len().to_string())
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
