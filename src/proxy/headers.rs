//! Header edits on the proxied request and response, made on the `http` header map
//! itself.
//!
//! Pingora's `insert_header` turns the name into text and parses it again, and keeps
//! a second map with each name's case; both maps grow one insert at a time, with no
//! way to reserve room. That came to about 1 800 instructions per header, a tenth of
//! a proxied request for the gateway's eleven. Taking the header apart into
//! `http::request::Parts` (or `response::Parts`), editing its `HeaderMap` with
//! ready-made names and putting it back costs a fraction of that.
//!
//! The price: the case map is dropped, so on HTTP/1.1 well-known names go out in
//! their usual capitals (`Content-Type`) and every other name in lower case, as
//! HAProxy and Envoy send them. Header names are case-insensitive (RFC 9110 §5.1),
//! and HTTP/2 has only lower case. Everything else the header carries is kept: the
//! method, the target, the version, extensions, the response's reason phrase and
//! whether an HTTP/2 request ends with its headers.

use http::request::Parts as RequestParts;
use http::response::Parts as ResponseParts;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

/// Runs `edit` on the request's parts, then puts them back.
pub fn edit_request<T>(
    request: &mut RequestHeader,
    edit: impl FnOnce(&mut RequestParts) -> Result<T>,
) -> Result<T> {
    let ends_stream = request.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = RequestParts::from(std::mem::replace(request, placeholder));
    let outcome = edit(&mut parts);
    let mut rebuilt = RequestHeader::from(parts);
    if let Some(ends_stream) = ends_stream {
        rebuilt.set_send_end_stream(ends_stream);
    }
    *request = rebuilt;
    outcome
}

/// Runs `edit` on the response's parts, then puts them back.
pub fn edit_response<T>(
    response: &mut ResponseHeader,
    edit: impl FnOnce(&mut ResponseParts) -> Result<T>,
) -> Result<T> {
    let reason = response.get_reason_phrase().map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = ResponseParts::from(std::mem::replace(response, placeholder));
    let outcome = edit(&mut parts);
    let mut rebuilt = ResponseHeader::from(parts);
    if reason.is_some() {
        rebuilt.set_reason_phrase(reason.as_deref())?;
    }
    *response = rebuilt;
    outcome
}

#[cfg(test)]
mod tests {
    use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};

    use super::*;

    const CUSTOM: HeaderName = HeaderName::from_static("x-custom");

    #[test]
    fn a_request_keeps_everything_but_header_case() {
        let mut request = RequestHeader::build("POST", b"/api/v3_0/assets?page=2", None).unwrap();
        request.insert_header("X-Custom", "one").unwrap();
        request.append_header("X-Custom", "two").unwrap();
        request
            .insert_header("Content-Type", "application/json")
            .unwrap();
        request.set_version(http::Version::HTTP_2);
        request.set_send_end_stream(false);
        request.extensions_mut().insert(7_u32);

        let added = edit_request(&mut request, |parts| {
            parts.headers.insert(
                HeaderName::from_static("x-added"),
                HeaderValue::from_static("yes"),
            );
            Ok(parts.headers.len())
        })
        .unwrap();

        assert_eq!(added, 4);
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(request.raw_path(), b"/api/v3_0/assets?page=2");
        assert_eq!(request.version, http::Version::HTTP_2);
        assert_eq!(request.send_end_stream(), Some(false));
        assert_eq!(request.extensions.get::<u32>(), Some(&7));
        let custom: Vec<_> = request.headers.get_all(CUSTOM).iter().collect();
        assert_eq!(custom, ["one", "two"]);
        assert_eq!(request.headers[CONTENT_TYPE], "application/json");
        assert_eq!(request.headers["x-added"], "yes");
        assert!(!request.has_case());
    }

    #[test]
    fn an_http1_request_goes_out_with_usual_capitals_and_lower_case() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("X-Custom", "one").unwrap();
        request.insert_header("content-type", "text/plain").unwrap();
        edit_request(&mut request, |_| Ok(())).unwrap();
        let mut wire = Vec::new();
        request.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("x-custom: one\r\n"), "{wire}");
        assert!(wire.contains("Content-Type: text/plain\r\n"), "{wire}");
    }

    #[test]
    fn a_response_keeps_its_status_and_reason_phrase() {
        let mut response = ResponseHeader::build(299, None).unwrap();
        response.set_reason_phrase(Some("Fine Enough")).unwrap();
        response.insert_header("X-Custom", "one").unwrap();
        edit_response(&mut response, |parts| {
            parts.headers.insert(
                HeaderName::from_static("x-added"),
                HeaderValue::from_static("yes"),
            );
            Ok(())
        })
        .unwrap();
        assert_eq!(response.status.as_u16(), 299);
        assert_eq!(response.get_reason_phrase(), Some("Fine Enough"));
        assert_eq!(response.headers[CUSTOM], "one");
        assert_eq!(response.headers["x-added"], "yes");

        let mut plain = ResponseHeader::build(404, None).unwrap();
        edit_response(&mut plain, |_| Ok(())).unwrap();
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
    }

    #[test]
    fn a_failed_edit_still_puts_the_header_back() {
        let mut request = RequestHeader::build("DELETE", b"/x", None).unwrap();
        let failed: Result<()> = edit_request(&mut request, |parts| {
            parts
                .headers
                .insert(CUSTOM, HeaderValue::from_static("kept"));
            Err(Error::explain(ErrorType::InternalError, "refused"))
        });
        assert!(failed.is_err());
        assert_eq!(request.method, http::Method::DELETE);
        assert_eq!(request.headers[CUSTOM], "kept");
    }
}
