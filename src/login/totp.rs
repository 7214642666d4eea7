//! Authenticator apps: time-based one-time passwords (RFC 6238 over RFC 4226's HOTP,
//! HMAC-SHA1, 30-second steps, 6 digits, the parameters every app supports), their
//! `otpauth://` enrollment URI and its QR code.

use ring::hmac;

/// Seconds per time step (RFC 6238 §5.2 recommends 30).
pub const STEP_SECONDS: i64 = 30;
const DIGITS: u32 = 6;
/// Steps accepted on either side of now, for clock drift and typing time (RFC 6238 §5.2).
const WINDOW: i64 = 1;
/// 160 bits, the HMAC-SHA1 block the RFC's reference secret has (RFC 4226 §4 R6).
const SECRET_BYTES: usize = 20;

/// A fresh random shared secret.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
    secret
}

/// The time step of a Unix time.
pub fn step_of(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECONDS)
}

/// HOTP (RFC 4226 §5.3): HMAC-SHA1 of the big-endian counter, dynamic truncation,
/// modulo 10^digits.
fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let bytes = tag.as_ref();
    let offset = usize::from(bytes.last().copied().unwrap_or(0) & 0x0f);
    let word = bytes
        .get(offset..offset + 4)
        .and_then(|w| <[u8; 4]>::try_from(w).ok())
        .map_or(0, u32::from_be_bytes);
    (word & 0x7fff_ffff) % 10u32.pow(digits)
}

/// The code an app shows at time step `step`.
pub fn code_at(secret: &[u8], step: i64) -> String {
    let code = hotp(secret, u64::try_from(step).unwrap_or(0), DIGITS);
    format!("{code:0width$}", width = DIGITS as usize)
}

/// Checks `code` against the steps around `now` that are later than `last_step`
/// (a code is good once: RFC 6238 §5.2). Returns the step it matched.
/// SECURITY: every candidate is compared in constant time, and all are compared.
pub fn verify(secret: &[u8], code: &str, now: i64, last_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_of(now);
    let mut matched = None;
    for step in current - WINDOW..=current + WINDOW {
        let expected = code_at(secret, step);
        let equal = crate::secret::constant_time_eq(expected.as_bytes(), code.as_bytes());
        if equal && step > last_step && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// Base32 without padding, as authenticator apps expect the secret (RFC 4648 §6).
pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://totp/…` URI apps scan (the Key Uri Format of Google Authenticator,
/// which every app follows).
pub fn uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let label = format!("{}:{}", encode(issuer), encode(account));
    format!(
        "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        base32(secret),
        encode(issuer)
    )
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URI as an inline SVG QR code (no external assets, no JavaScript).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(uri, qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(220, 220)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (their 8-digit codes; ours are the last 6).
    const RFC_SECRET: &[u8] = b"12345678901234567890";
    const RFC_VECTORS: &[(i64, &str)] = &[
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        for (time, expected) in RFC_VECTORS {
            let eight = format!(
                "{:08}",
                hotp(RFC_SECRET, u64::try_from(step_of(*time)).unwrap_or(0), 8)
            );
            assert_eq!(&eight, expected, "time {time}");
            assert_eq!(
                code_at(RFC_SECRET, step_of(*time)),
                expected[2..],
                "time {time}"
            );
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_not_beyond() {
        let now = 1_234_567_890;
        let step = step_of(now);
        for offset in -1..=1 {
            let code = code_at(RFC_SECRET, step + offset);
            assert_eq!(verify(RFC_SECRET, &code, now, 0), Some(step + offset));
        }
        for offset in [-3, -2, 2, 3] {
            let code = code_at(RFC_SECRET, step + offset);
            assert_eq!(verify(RFC_SECRET, &code, now, 0), None, "offset {offset}");
        }
    }

    #[test]
    fn a_used_step_is_not_accepted_again() {
        let now = 1_111_111_111;
        let code = code_at(RFC_SECRET, step_of(now));
        let used = verify(RFC_SECRET, &code, now, 0).expect("first use");
        assert_eq!(verify(RFC_SECRET, &code, now, used), None);
        // Nor an older code after a newer one was used.
        let older = code_at(RFC_SECRET, step_of(now) - 1);
        assert_eq!(verify(RFC_SECRET, &older, now, used), None);
    }

    #[test]
    fn malformed_codes_are_refused() {
        for code in ["", "12345", "1234567", "12a456", "１２３４５６"] {
            assert_eq!(verify(RFC_SECRET, code, 59, 0), None, "{code:?}");
        }
    }

    #[test]
    fn enrollment_uri_carries_the_base32_secret_and_encoded_label() {
        let uri = uri("Energy Co", "ann@example.com", RFC_SECRET);
        assert_eq!(
            uri,
            "otpauth://totp/Energy%20Co:ann%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Energy%20Co&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&uri).expect("qr");
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }

    #[test]
    fn new_secrets_are_random_and_full_length() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), SECRET_BYTES);
        assert_ne!(a, b);
    }
}
