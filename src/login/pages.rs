//! The login pages: HTML templates compiled into the binary (`templates/`), filled
//! with escaped values, one stylesheet inline (allowed by its hash in the
//! Content-Security-Policy, so no other style or any script can run). No external
//! assets and no JavaScript: every step is a plain form.
//!
//! Placeholders: `{{name}}` is replaced by the HTML-escaped value, `{{{name}}}` by
//! markup the gateway made itself (the QR code, lists it built from escaped parts).

use std::sync::LazyLock;

use base64::Engine as _;

const LAYOUT: &str = include_str!("../../templates/layout.html");
const STYLE: &str = include_str!("../../templates/style.css");
pub const LOGIN: &str = include_str!("../../templates/login.html");
pub const VERIFY: &str = include_str!("../../templates/verify.html");
pub const RESEND: &str = include_str!("../../templates/resend.html");
pub const ENROLL: &str = include_str!("../../templates/enroll.html");
pub const RECOVERY: &str = include_str!("../../templates/recovery.html");
pub const LOGOUT: &str = include_str!("../../templates/logout.html");
pub const NOTICE: &str = include_str!("../../templates/notice.html");

/// A value for a placeholder.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Escaped on the way in.
    Text(&'a str),
    /// Markup the gateway built; inserted as is.
    Markup(&'a str),
}

/// The Content-Security-Policy of every page: nothing but this stylesheet, forms
/// posting to this origin, no framing (clickjacking), no `<base>`.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
});

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills `template`'s placeholders; one not in `values` becomes empty (a test keeps
/// every template's placeholders supplied).
pub fn fill(template: &str, values: &[(&str, Value<'_>)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start..).unwrap_or_default();
        let (raw, open, close) = if after.starts_with("{{{") {
            (true, 3, "}}}")
        } else {
            (false, 2, "}}")
        };
        let Some(end) = after.find(close) else {
            out.push_str(after);
            return out;
        };
        let name = after.get(open..end).unwrap_or_default().trim();
        match values.iter().find(|(key, _)| *key == name).map(|(_, v)| *v) {
            Some(Value::Text(text)) => out.push_str(&escape(text)),
            Some(Value::Markup(markup)) if raw => out.push_str(markup),
            // SECURITY: markup only goes where the template asked for markup.
            Some(Value::Markup(markup)) => out.push_str(&escape(markup)),
            None => {}
        }
        rest = after.get(end + close.len()..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// A message above the page's content.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    None,
    Error(&'a str),
    Notice(&'a str),
}

/// A whole page: the layout around `content`.
pub fn page(title: &str, heading: &str, message: Message<'_>, content: &str) -> String {
    let message = match message {
        Message::None => String::new(),
        Message::Error(text) => format!(r#"<p class="error" role="alert">{}</p>"#, escape(text)),
        Message::Notice(text) => format!(r#"<p class="notice" role="status">{}</p>"#, escape(text)),
    };
    fill(
        LAYOUT,
        &[
            ("title", Value::Text(title)),
            ("heading", Value::Text(heading)),
            ("style", Value::Markup(STYLE)),
            ("message", Value::Markup(&message)),
            ("content", Value::Markup(content)),
        ],
    )
}

/// `ann@example.com` → `a••@example.com`: enough to recognise, not to harvest.
pub fn masked_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}••@{domain}")
        }
        None => "your address".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder of a template.
    fn placeholders(template: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            let after = rest.get(start..).unwrap_or_default();
            let inner = after.trim_start_matches('{');
            let end = inner.find('}').unwrap_or(0);
            names.push(inner.get(..end).unwrap_or_default().trim().to_owned());
            rest = inner.get(end..).unwrap_or_default();
        }
        names
    }

    #[test]
    fn text_is_escaped_and_markup_only_goes_where_asked() {
        let filled = fill(
            "<p>{{a}}</p><div>{{{b}}}</div><i>{{c}}</i>",
            &[
                ("a", Value::Text("<script>alert('x')</script>&\"")),
                ("b", Value::Markup("<svg></svg>")),
                ("c", Value::Markup("<b>")),
            ],
        );
        assert_eq!(
            filled,
            "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;</p><div><svg></svg></div><i>&lt;b&gt;</i>"
        );
    }

    #[test]
    fn every_template_placeholder_is_known() {
        let known = [
            "title",
            "heading",
            "style",
            "message",
            "content",
            "action",
            "csrf",
            "next",
            "email",
            "instructions",
            "code_label",
            "inputmode",
            "extra",
            "status",
            "qr",
            "secret",
            "codes",
            "text",
            "link",
            "link_text",
        ];
        for template in [
            LAYOUT, LOGIN, VERIFY, RESEND, ENROLL, RECOVERY, LOGOUT, NOTICE,
        ] {
            for name in placeholders(template) {
                assert!(
                    known.contains(&name.as_str()),
                    "unknown placeholder `{name}`"
                );
            }
        }
    }

    #[test]
    fn pages_need_no_external_assets_and_no_script() {
        let html = page(
            "Portcullis",
            "Log in",
            Message::Error("Wrong email or password."),
            LOGIN,
        );
        assert!(html.contains(r#"<p class="error" role="alert">Wrong email or password.</p>"#));
        for forbidden in ["<script", "http://", "https://", "<link", "<img src=\"http"] {
            assert!(!html.contains(forbidden), "{forbidden}");
        }
        assert!(CONTENT_SECURITY_POLICY.contains("style-src 'sha256-"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn emails_are_masked() {
        assert_eq!(masked_email("ann@example.com"), "a••@example.com");
        assert_eq!(masked_email("nonsense"), "your address");
    }
}
