//! The plain-HTTP listener: every request gets a 308 to the same host, path and query
//! on https. Nothing is forwarded and no body is read; the connection closes after the
//! answer, so an unread body can never be taken for a second request.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::route::host_without_port;

/// Answers plain-HTTP requests with a redirect to https.
pub struct Redirect {
    https_port: u16,
}

impl Redirect {
    pub fn new(https_port: u16) -> Self {
        Self { https_port }
    }
}

#[async_trait]
impl ServeHttp for Redirect {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        session.set_keepalive(None);
        let request = session.req_header();
        let host = request
            .headers
            .get(http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| request.uri.authority().map(http::uri::Authority::as_str));
        let response = match location(host, request.raw_path(), self.https_port) {
            Some(location) => Response::builder()
                .status(StatusCode::PERMANENT_REDIRECT)
                .header(http::header::LOCATION, location)
                .header(http::header::CONTENT_LENGTH, "0")
                .header(http::header::CONNECTION, "close")
                .body(Vec::new()),
            None => {
                let body = br#"{"status":400,"message":"Bad request: use https."}"#.to_vec();
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CONTENT_LENGTH, body.len().to_string())
                    .header(http::header::CONNECTION, "close")
                    .body(body)
            }
        };
        response.unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// `https://host[:port]/path?query` for a plain-HTTP request, or `None` when the host
/// or target cannot be trusted into a `Location` (RFC 9110 §10.2.2).
pub fn location(host: Option<&str>, target: &[u8], https_port: u16) -> Option<String> {
    let host = host.filter(|host| crate::route::is_valid_host(host))?;
    let name = host_without_port(host);
    // Only origin-form targets, and only visible ASCII: nothing that could turn into a
    // header break or another host.
    if target.first() != Some(&b'/') || !target.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let target = std::str::from_utf8(target).ok()?;
    let target = target.split('#').next().unwrap_or(target);
    Some(if https_port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{https_port}{target}")
    })
}

#[cfg(test)]
mod tests {
    use super::location;

    #[test]
    fn path_and_query_are_kept_and_port_replaced() {
        assert_eq!(
            location(Some("example.com:8080"), b"/a/b?x=1&y=%2F", 443),
            Some("https://example.com/a/b?x=1&y=%2F".into())
        );
        assert_eq!(
            location(Some("localhost:8080"), b"/", 8443),
            Some("https://localhost:8443/".into())
        );
        assert_eq!(
            location(Some("[::1]:80"), b"/x", 8443),
            Some("https://[::1]:8443/x".into())
        );
    }

    #[test]
    fn untrustworthy_hosts_and_targets_get_no_location() {
        assert_eq!(location(None, b"/", 443), None);
        assert_eq!(location(Some("evil.com/x"), b"/", 443), None);
        assert_eq!(location(Some("a@b"), b"/", 443), None);
        assert_eq!(location(Some("example.com"), b"http://other/", 443), None);
        assert_eq!(location(Some("example.com"), b"/a b", 443), None);
        assert_eq!(location(Some("example.com"), b"/\xc3\xa9", 443), None);
    }
}
