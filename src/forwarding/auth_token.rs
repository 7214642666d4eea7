//! Tokens outside `Authorization`, where Flask-Security would also read them.
//!
//! Flask-Security authenticates with `?auth_token=` or a JSON body's top-level
//! `auth_token` before the `Authorization` header (DESIGN §3). If those reached
//! FlexMeasures, it could act for a user the gateway never checked. In front of a
//! FlexMeasures directory they are refused (400) or removed, by configuration.
//!
//! Matching follows Werkzeug: query names are percent-decoded (`+` is a space), and a
//! body counts as JSON when its media type is `application/json` or
//! `application/*+json`. A JSON body that does not parse is refused: Python's parser
//! accepts what serde's does not (`NaN`, UTF-16), so it might find a token there.

use bytes::Bytes;

/// Flask-Security's `SECURITY_TOKEN_AUTHENTICATION_KEY`.
pub const AUTH_TOKEN: &[u8] = b"auth_token";

/// Percent-decodes a query component as Werkzeug does (`+` is a space; bad escapes
/// stay as they are).
fn decode(component: &str) -> Vec<u8> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match byte {
            b'+' => out.push(b' '),
            b'%' => match (hex(index + 1), hex(index + 2)) {
                (Some(high), Some(low)) => {
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                    index += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        index += 1;
    }
    out
}

fn is_token_parameter(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or_default();
    decode(name) == AUTH_TOKEN
}

/// Whether a query names `auth_token`, in any encoding.
pub fn query_has_token(query: &str) -> bool {
    query.split('&').any(is_token_parameter)
}

/// The query without its `auth_token` parameters; `None` when nothing is left.
pub fn strip_query(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_token_parameter(pair))
        .collect();
    let kept = kept.join("&");
    (!kept.is_empty()).then_some(kept)
}

/// Whether Werkzeug's `request.is_json` would be true for this `Content-Type`.
pub fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Why a JSON body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the JSON body carries `auth_token`")]
    Token,
    #[error("the JSON body does not parse")]
    Malformed,
    #[error("the JSON body is larger than `max_json_body`")]
    TooLarge,
}

/// A JSON body collected for inspection, then forwarded whole (or refused).
#[derive(Debug)]
pub struct BodyGuard {
    buffer: Vec<u8>,
    limit: usize,
    strip: bool,
}

impl BodyGuard {
    pub fn new(limit: usize, strip: bool) -> Self {
        Self {
            buffer: Vec::new(),
            limit,
            strip,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if self.buffer.len() + chunk.len() > self.limit {
            return Err(BodyError::TooLarge);
        }
        self.buffer.extend_from_slice(chunk);
        Ok(())
    }

    /// The body to forward: unchanged, or without a top-level `auth_token` when
    /// stripping.
    pub fn finish(&mut self) -> Result<Bytes, BodyError> {
        let body = std::mem::take(&mut self.buffer);
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Bytes::from(body));
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| BodyError::Malformed)?;
        let Some(object) = value.as_object_mut() else {
            return Ok(Bytes::from(body));
        };
        let key = std::str::from_utf8(AUTH_TOKEN).unwrap_or("auth_token");
        if !object.contains_key(key) {
            return Ok(Bytes::from(body));
        }
        if !self.strip {
            return Err(BodyError::Token);
        }
        object.remove(key);
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|_| BodyError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_found_in_every_encoding() {
        for query in [
            "auth_token=x",
            "a=1&auth_token=x",
            "auth%5Ftoken=x",
            "auth%5ftoken=x",
            "%61uth_token=x",
            "auth_token",
            "a=1&auth_token=&b=2",
        ] {
            assert!(query_has_token(query), "{query}");
        }
        for query in [
            "a=auth_token",
            "auth_tokens=x",
            "xauth_token=1",
            "auth+token=1",
            "",
        ] {
            assert!(!query_has_token(query), "{query}");
        }
    }

    #[test]
    fn stripping_keeps_every_other_parameter() {
        assert_eq!(
            strip_query("a=1&auth_token=x&b=auth_token&auth%5Ftoken=y").as_deref(),
            Some("a=1&b=auth_token")
        );
        assert_eq!(strip_query("auth_token=x"), None);
    }

    #[test]
    fn json_media_types_are_recognised_as_werkzeug_does() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in ["text/json", "application/jsonx", "multipart/form-data", ""] {
            assert!(!is_json(other), "{other}");
        }
    }

    fn guard(body: &str, strip: bool) -> Result<Bytes, BodyError> {
        let mut guard = BodyGuard::new(1024, strip);
        for chunk in body.as_bytes().chunks(7) {
            guard.push(chunk)?;
        }
        guard.finish()
    }

    #[test]
    fn json_bodies_with_a_token_are_refused_or_stripped() {
        let body = r#"{"auth_token":"other user's","value":[1,2]}"#;
        assert_eq!(guard(body, false), Err(BodyError::Token));
        let stripped = guard(body, true).expect("stripped");
        let value: serde_json::Value = serde_json::from_slice(&stripped).expect("json");
        assert_eq!(value, serde_json::json!({"value": [1, 2]}));
        // Untouched when there is nothing to strip, byte for byte.
        let plain = r#"{ "value" : 1 }"#;
        assert_eq!(guard(plain, false).expect("plain"), plain.as_bytes());
        assert_eq!(guard("[1,2]", false).expect("array"), "[1,2]".as_bytes());
        assert_eq!(guard("", false).expect("empty"), "".as_bytes());
        // Nested keys are not Flask-Security's.
        assert!(guard(r#"{"data":{"auth_token":"x"}}"#, false).is_ok());
    }

    #[test]
    fn bodies_python_might_read_differently_are_refused() {
        for body in [r#"{"auth_token":"x","v":NaN}"#, "{", "\u{feff}{}"] {
            assert_eq!(guard(body, true), Err(BodyError::Malformed), "{body}");
        }
        let mut small = BodyGuard::new(4, false);
        assert_eq!(small.push(b"{\"a\":1}"), Err(BodyError::TooLarge));
    }
}
