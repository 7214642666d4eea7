//! A tiny backend for `portcullis demo`: a page that shows what the gateway forwarded.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// Answers every request with an HTML page listing the request it received.
pub struct DemoBackend;

/// Headers shown on the page: the ones the gateway sets or passes on.
const SHOWN: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "x-portcullis-user-id",
    "x-portcullis-account-id",
    "x-portcullis-roles",
    "x-portcullis-account-roles",
    "user-agent",
];

#[async_trait]
impl ServeHttp for DemoBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        let mut rows = String::new();
        for name in SHOWN {
            for value in request.headers.get_all(*name) {
                rows.push_str(&format!(
                    "<tr><th>{}</th><td>{}</td></tr>",
                    escape(name),
                    escape(&String::from_utf8_lossy(value.as_bytes()))
                ));
            }
        }
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Portcullis demo backend</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;color:#1d2430}}\
             table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #dde2ea;font-family:ui-monospace,monospace;font-size:.9rem}}\
             th{{width:14rem;color:#4a5568}}code{{background:#eef1f5;padding:.1rem .3rem;border-radius:3px}}</style></head>\
             <body><h1>Hello from the demo backend</h1>\
             <p>This page came through Portcullis over HTTPS. The gateway canonicalized the path, \
             removed any identity headers the client sent and set its own.</p>\
             <p><code>{} {}</code></p><table>{}</table></body></html>",
            escape(request.method.as_str()),
            escape(&String::from_utf8_lossy(request.raw_path())),
            rows
        );
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(http::header::CONTENT_LENGTH, body.len().to_string())
            .body(body.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
