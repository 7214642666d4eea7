//! First stage of the flow for HTTP/1.x: refuse requests whose body length two
//! parsers could read differently (request smuggling, RFC 9112 §6 and §11.2).
//!
//! pingora resolves `Content-Length` against `Transfer-Encoding` itself and forwards
//! one normalized request, but a front door should not guess: a request that a
//! lenient backend, cache or logger behind or beside it could frame otherwise is
//! refused with 400, and the connection is closed after the answer. Allowed:
//! no body headers, one `Content-Length` of digits, or one `Transfer-Encoding:
//! chunked` (any case and spacing) without `Content-Length`, on HTTP/1.1.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Version};

/// Why a request's framing is refused; for the log and the audit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousFraming {
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("more than one Content-Length")]
    SeveralLengths,
    #[error("a Content-Length that is not a plain number")]
    BadLength,
    #[error("a Transfer-Encoding other than `chunked`")]
    UnsupportedEncoding,
    #[error("Transfer-Encoding on HTTP/1.0")]
    EncodingOnHttp10,
}

/// Checks the body framing of an HTTP/1.x request (h2 frames bodies itself).
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), AmbiguousFraming> {
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return Ok(());
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(AmbiguousFraming::SeveralLengths);
    }
    if let Some(length) = length {
        let digits = length.as_bytes();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(AmbiguousFraming::BadLength);
        }
    }
    let mut encodings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(encoding) = encodings.next() else {
        return Ok(());
    };
    if version == Version::HTTP_10 {
        return Err(AmbiguousFraming::EncodingOnHttp10);
    }
    if length.is_some() {
        return Err(AmbiguousFraming::LengthAndEncoding);
    }
    let chunked = encoding.to_str().is_ok_and(|value| {
        value
            .trim_matches([' ', '\t'])
            .eq_ignore_ascii_case("chunked")
    });
    if !chunked || encodings.next().is_some() {
        return Err(AmbiguousFraming::UnsupportedEncoding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a [u8])];

    fn headers(pairs: Pairs<'_>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_bytes(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn plain_framings_pass() {
        for pairs in [
            &[][..],
            &[("content-length", &b"0"[..])],
            &[("content-length", b"1234")],
            &[("transfer-encoding", b"chunked")],
            &[("transfer-encoding", b"Chunked ")],
        ] {
            assert_eq!(
                check(Version::HTTP_11, &headers(pairs)),
                Ok(()),
                "{pairs:?}"
            );
        }
        assert_eq!(
            check(Version::HTTP_10, &headers(&[("content-length", b"5")])),
            Ok(())
        );
    }

    #[test]
    fn every_ambiguous_framing_is_refused() {
        use AmbiguousFraming::*;
        let cases: &[(Pairs<'_>, AmbiguousFraming)] = &[
            (
                &[("content-length", b"5"), ("transfer-encoding", b"chunked")],
                LengthAndEncoding,
            ),
            (
                &[("content-length", b"5"), ("content-length", b"5")],
                SeveralLengths,
            ),
            (
                &[("content-length", b"0"), ("content-length", b"44")],
                SeveralLengths,
            ),
            (&[("content-length", b"0, 44")], BadLength),
            (&[("content-length", b"+44")], BadLength),
            (&[("content-length", b"-1")], BadLength),
            (&[("content-length", b"0x2c")], BadLength),
            (&[("content-length", b"")], BadLength),
            (&[("content-length", b"99999999999999999999")], BadLength),
            (&[("transfer-encoding", b"xchunked")], UnsupportedEncoding),
            (
                &[("transfer-encoding", b"chunked, identity")],
                UnsupportedEncoding,
            ),
            (
                &[("transfer-encoding", b"identity, chunked")],
                UnsupportedEncoding,
            ),
            (
                &[("transfer-encoding", b"gzip, chunked")],
                UnsupportedEncoding,
            ),
            (
                &[("transfer-encoding", b"\"chunked\"")],
                UnsupportedEncoding,
            ),
            (
                &[
                    ("transfer-encoding", b"chunked"),
                    ("transfer-encoding", b"x"),
                ],
                UnsupportedEncoding,
            ),
            (
                &[
                    ("transfer-encoding", b"chunked"),
                    ("transfer-encoding", b"chunked"),
                ],
                UnsupportedEncoding,
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                check(Version::HTTP_11, &headers(pairs)),
                Err(*expected),
                "{pairs:?}"
            );
        }
        assert_eq!(
            check(
                Version::HTTP_10,
                &headers(&[("transfer-encoding", b"chunked")])
            ),
            Err(EncodingOnHttp10)
        );
    }

    #[test]
    fn h2_is_framed_by_its_own_frames() {
        let both = headers(&[("content-length", b"5"), ("content-length", b"6")]);
        assert_eq!(check(Version::HTTP_2, &both), Ok(()));
    }
}
