//! First stage of the flow: the request target becomes one canonical form.
//!
//! [`canonicalize`] turns the raw request target into a [`CanonicalTarget`]. Routing,
//! authorization and the request forwarded to the backend all use that one value, so
//! the gateway never decides on one spelling of a path and forwards another.
//!
//! Targets whose meaning a backend could read differently from the gateway are refused
//! rather than "fixed" (DESIGN §7): encoded `/ \ . NUL ;`, double encoding (`%25`), dot
//! segments, empty segments (`//`), `;` path parameters, control bytes, backslashes and
//! invalid UTF-8. What remains is normalized: percent-escapes of unreserved characters
//! are decoded (RFC 3986 §6.2.2.2), all other escapes use upper-case hex (§6.2.2.1), and
//! raw UTF-8 is percent-encoded. The query is validated but forwarded byte for byte;
//! a fragment never reaches a backend.

use std::fmt;

/// A request target in canonical form: what the policy decides on and what the backend gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    path: String,
    query: Option<String>,
}

impl CanonicalTarget {
    /// The canonical path: starts with `/`, no empty, `.` or `..` segments.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query without its leading `?`, exactly as the client sent it.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Replaces the query (after parameters were removed from it).
    pub fn set_query(&mut self, query: Option<String>) {
        self.query = query;
    }

    /// Path and query as they are sent to the backend.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{}", self.path, query),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was refused. Logged and audited; the client gets a fixed 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousTarget {
    #[error("request target is empty")]
    Empty,
    #[error("request target is not in origin form (must start with `/`)")]
    NotOriginForm,
    #[error("request target contains a control byte, space or non-ASCII byte")]
    ForbiddenByte,
    #[error("request target contains a backslash")]
    Backslash,
    #[error("path contains a `;` parameter")]
    PathParameter,
    #[error("path contains a malformed percent-escape")]
    MalformedEscape,
    #[error("path contains an encoded `/`, `\\`, `.`, `;`, `%` or control byte")]
    EncodedDelimiter,
    #[error("path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("path contains a `.` or `..` segment")]
    DotSegment,
    #[error("path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("query contains a malformed percent-escape")]
    MalformedQueryEscape,
}

/// Canonicalizes a raw HTTP request target (`/path?query`, origin form).
///
/// The result is a fixed point: canonicalizing a canonical target gives it back unchanged.
pub fn canonicalize(target: &[u8]) -> Result<CanonicalTarget, AmbiguousTarget> {
    if target.is_empty() {
        return Err(AmbiguousTarget::Empty);
    }
    // A fragment is never part of a request target (RFC 9112 §3.2); drop one a client sent.
    let target = match target.iter().position(|&b| b == b'#') {
        Some(end) => target.get(..end).unwrap_or_default(),
        None => target,
    };
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(split) => (
            target.get(..split).unwrap_or_default(),
            target.get(split + 1..),
        ),
        None => (target, None),
    };
    if path.first() != Some(&b'/') {
        return Err(AmbiguousTarget::NotOriginForm);
    }
    Ok(CanonicalTarget {
        path: canonical_path(path)?,
        query: query.map(validated_query).transpose()?,
    })
}

fn canonical_path(raw: &[u8]) -> Result<String, AmbiguousTarget> {
    // Decode first so the UTF-8 check and the segment rules see what the backend will see.
    let decoded = decode_path(raw)?;
    let text = std::str::from_utf8(&decoded).map_err(|_| AmbiguousTarget::InvalidUtf8)?;

    let mut canonical = String::with_capacity(raw.len());
    // The first split item is the empty string before the leading `/`.
    let mut segments = text.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        // SECURITY: `//` is read as `/` by some servers and as an empty segment by others.
        if segment.is_empty() && !is_last {
            return Err(AmbiguousTarget::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(AmbiguousTarget::DotSegment);
        }
        canonical.push('/');
        for byte in segment.bytes() {
            push_path_byte(&mut canonical, byte);
        }
    }
    Ok(canonical)
}

/// Percent-decodes a raw path, refusing every byte and escape that makes it ambiguous.
fn decode_path(raw: &[u8]) -> Result<Vec<u8>, AmbiguousTarget> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let value = match (bytes.next(), bytes.next()) {
                    (Some(high), Some(low)) => hex_pair(high, low),
                    _ => None,
                }
                .ok_or(AmbiguousTarget::MalformedEscape)?;
                // SECURITY: these decode to delimiters or to bytes that backends and
                // filesystems treat specially; a second decoding pass would see `%25` as `%`.
                if matches!(value, b'/' | b'\\' | b'.' | b';' | b'%') || value.is_ascii_control() {
                    return Err(AmbiguousTarget::EncodedDelimiter);
                }
                decoded.push(value);
            }
            b'\\' => return Err(AmbiguousTarget::Backslash),
            b';' => return Err(AmbiguousTarget::PathParameter),
            // Raw non-ASCII bytes are tolerated as UTF-8 (checked after decoding) and
            // re-encoded; control bytes and spaces never are.
            0x00..=0x20 | 0x7f => return Err(AmbiguousTarget::ForbiddenByte),
            b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                return Err(AmbiguousTarget::ForbiddenByte);
            }
            _ => decoded.push(byte),
        }
    }
    Ok(decoded)
}

/// Appends one decoded path byte in canonical spelling: RFC 3986 `pchar`s stay literal,
/// everything else becomes an upper-case percent-escape.
fn push_path_byte(out: &mut String, byte: u8) {
    let literal = byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            // unreserved
            b'-' | b'.' | b'_' | b'~'
            // sub-delims without `;` (refused above), plus `:` and `@`
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        );
    if literal {
        out.push(char::from(byte));
    } else {
        push_escape(out, byte);
    }
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [byte >> 4, byte & 0x0f] {
        let digit = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
        out.push(char::from(digit));
    }
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let high = char::from(high).to_digit(16)?;
    let low = char::from(low).to_digit(16)?;
    u8::try_from(high * 16 + low).ok()
}

/// The query is the backend's to interpret; the gateway only refuses bytes that cannot
/// appear in a valid request target and escapes that decode differently per parser.
fn validated_query(raw: &[u8]) -> Result<String, AmbiguousTarget> {
    let mut bytes = raw.iter().copied();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => match (bytes.next(), bytes.next()) {
                (Some(high), Some(low)) if hex_pair(high, low).is_some() => {}
                _ => return Err(AmbiguousTarget::MalformedQueryEscape),
            },
            0x00..=0x20 | 0x7f..=0xff => return Err(AmbiguousTarget::ForbiddenByte),
            b'\\' => return Err(AmbiguousTarget::Backslash),
            _ => {}
        }
    }
    // Only ASCII remains, so this cannot fail; stay total anyway.
    String::from_utf8(raw.to_vec()).map_err(|_| AmbiguousTarget::InvalidUtf8)
}

impl fmt::Display for CanonicalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path_of(raw: &str) -> Result<String, AmbiguousTarget> {
        canonicalize(raw.as_bytes()).map(|target| target.path().to_owned())
    }

    #[test]
    fn plain_paths_are_kept() {
        assert_eq!(path_of("/"), Ok("/".into()));
        assert_eq!(
            path_of("/api/v3_0/sensors/1/data"),
            Ok("/api/v3_0/sensors/1/data".into())
        );
        assert_eq!(path_of("/trailing/"), Ok("/trailing/".into()));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(path_of("/%61%62c"), Ok("/abc".into()));
        assert_eq!(path_of("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(path_of("/a%3fb"), Ok("/a%3Fb".into()));
        assert_eq!(path_of("/%7E%2D"), Ok("/~-".into()));
    }

    #[test]
    fn raw_utf8_is_percent_encoded() {
        assert_eq!(path_of("/caf\u{e9}"), Ok("/caf%C3%A9".into()));
        assert_eq!(path_of("/caf%C3%A9"), Ok("/caf%C3%A9".into()));
    }

    #[test]
    fn ambiguous_targets_are_refused() {
        use AmbiguousTarget::*;
        let cases: &[(&[u8], AmbiguousTarget)] = &[
            (b"", Empty),
            (b"*", NotOriginForm),
            (b"http://example.com/", NotOriginForm),
            (b"/a%2fb", EncodedDelimiter),
            (b"/a%2Fb", EncodedDelimiter),
            (b"/a%5cb", EncodedDelimiter),
            (b"/a%5Cb", EncodedDelimiter),
            (b"/%2e%2e/etc", EncodedDelimiter),
            (b"/%2E", EncodedDelimiter),
            (b"/a%00b", EncodedDelimiter),
            (b"/a%3bb", EncodedDelimiter),
            (b"/a%2541", EncodedDelimiter),
            (b"/a%0ab", EncodedDelimiter),
            (b"/a%7fb", EncodedDelimiter),
            (b"/a\\b", Backslash),
            (b"/a/../b", DotSegment),
            (b"/a/./b", DotSegment),
            (b"/..", DotSegment),
            (b"/a/.", DotSegment),
            (b"//a", EmptySegment),
            (b"/a//b", EmptySegment),
            (b"/a;jsessionid=1", PathParameter),
            (b"/a\x00b", ForbiddenByte),
            (b"/a\x01b", ForbiddenByte),
            (b"/a\x7fb", ForbiddenByte),
            (b"/a b", ForbiddenByte),
            (b"/a\tb", ForbiddenByte),
            (b"/\xff", InvalidUtf8),
            (b"/%ff", InvalidUtf8),
            (b"/%c0%af", InvalidUtf8),
            (b"/a%", MalformedEscape),
            (b"/a%4", MalformedEscape),
            (b"/a%zz", MalformedEscape),
            (b"/a?x=%zz", MalformedQueryEscape),
            (b"/a?x=\x01", ForbiddenByte),
            (b"/a?x=1 2", ForbiddenByte),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                canonicalize(raw).err(),
                Some(*expected),
                "target {:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn query_is_kept_byte_for_byte_and_fragment_dropped() {
        let target = canonicalize(b"/a?b=%2f&c=%25#frag").expect("valid");
        assert_eq!(target.path(), "/a");
        assert_eq!(target.query(), Some("b=%2f&c=%25"));
        assert_eq!(target.path_and_query(), "/a?b=%2f&c=%25");
        let target = canonicalize(b"/a#frag?x").expect("valid");
        assert_eq!(target.path_and_query(), "/a");
    }

    proptest! {
        #[test]
        fn canonicalization_is_idempotent(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut target = vec![b'/'];
            target.extend(raw);
            if let Ok(first) = canonicalize(&target) {
                let again = canonicalize(first.path_and_query().as_bytes());
                prop_assert_eq!(again, Ok(first));
            }
        }

        #[test]
        fn canonical_paths_have_no_ambiguous_parts(
            segments in proptest::collection::vec("[a-zA-Z0-9%._~;:@!$&'()*+,=/-]{0,12}", 1..6)
        ) {
            let target = format!("/{}", segments.join("/"));
            if let Ok(canonical) = canonicalize(target.as_bytes()) {
                let path = canonical.path();
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.contains("//"));
                prop_assert!(!path.contains(';'));
                prop_assert!(!path.split('/').any(|s| s == "." || s == ".."));
                prop_assert!(!path.to_ascii_lowercase().contains("%2f"));
                prop_assert!(!path.to_ascii_lowercase().contains("%25"));
            }
        }
    }
}
