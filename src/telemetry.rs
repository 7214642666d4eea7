//! Logging: `tracing` with a text or JSON format. pingora's `log` records are bridged in.
//!
//! SECURITY: nothing here logs headers, bodies or query strings; modules log ids and
//! canonical paths only (CONVENTIONS 10). pingora is less careful: at debug level it
//! dumps whole request headers (`Authorization`, `Cookie`), and its "Fail to proxy"
//! errors quote the URI with its query string. So whatever filter is configured,
//! pingora's crates are capped at `info` and `pingora_proxy` is silenced; the
//! gateway's own request line and `proxying failed` warning say what happened.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Put before the operator's filter: the most pingora may say.
const PINGORA_CAPS: &str = "pingora=info,pingora_core=info,pingora_http=info,\
                            pingora_pool=info,pingora_proxy=off";

/// The caps, then the operator's filter without any directive that would let pingora
/// say more than the caps (debug or trace for a pingora crate, anything for
/// `pingora_proxy`). Quieter pingora directives (`pingora_core=warn`) are kept and,
/// coming later, replace the cap for their target.
pub fn safe_filter(filter: &str) -> String {
    let allowed = |directive: &&str| {
        if !directive.starts_with("pingora") {
            return true;
        }
        let level = directive
            .rsplit_once('=')
            .map(|(_, level)| level.to_ascii_lowercase());
        !directive.starts_with("pingora_proxy")
            && matches!(level.as_deref(), Some("off" | "error" | "warn" | "info"))
    };
    let mut directives = vec![PINGORA_CAPS];
    directives.extend(
        filter
            .split(',')
            .map(str::trim)
            .filter(|directive| !directive.is_empty())
            .filter(allowed),
    );
    directives.join(",")
}

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter.
pub fn init(settings: &LogSettings) {
    let configured = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.filter.clone());
    let filter = EnvFilter::try_new(safe_filter(&configured))
        .unwrap_or_else(|_| EnvFilter::new(safe_filter("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_may_be_quieter_but_never_louder_than_the_caps() {
        assert_eq!(
            safe_filter(
                "debug,pingora_core=trace, pingora_proxy=warn,pingora_pool,portcullis=trace,pingora_http=warn"
            ),
            format!("{PINGORA_CAPS},debug,portcullis=trace,pingora_http=warn")
        );
        assert!(EnvFilter::try_new(safe_filter("info")).is_ok());
    }
}
