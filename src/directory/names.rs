//! What account names, emails and role names may look like.

/// User roles with a meaning of their own in policies (DESIGN §2).
pub const BUILTIN_USER_ROLES: &[&str] = &["admin", "admin-reader", "account-admin", "consultant"];

/// Account roles commonly used in energy deployments (USEF); others are welcome, these
/// only serve to catch typos.
pub const KNOWN_ACCOUNT_ROLES: &[&str] = &[
    "MDC",
    "Prosumer",
    "Supplier",
    "ESCo",
    "DSO",
    "TSO",
    "Aggregator",
    "BRP",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("`{0}` is not a valid email address")]
    Email(String),
    #[error("`{0}` is not a valid role name: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    Role(String),
    #[error(
        "unknown role `{name}`; did you mean `{nearest}`? (pass --new-role to create `{name}` as a new role)"
    )]
    ProbableTypo { name: String, nearest: String },
    #[error(
        "`{0}` is not a valid account name: use 1 to 100 characters without control characters"
    )]
    Account(String),
}

/// Trims and lower-cases an email; refuses anything that is not `local@domain`.
pub fn normalize_email(email: &str) -> Result<String, NameError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(NameError::Email(email))
    }
}

pub fn validate_account_name(name: &str) -> Result<(), NameError> {
    if name.trim().is_empty()
        || name.chars().count() > 100
        || name.chars().any(char::is_control)
        || name.trim() != name
    {
        return Err(NameError::Account(name.to_owned()));
    }
    Ok(())
}

/// Role names end up comma-separated in identity headers, so they are kept simple.
pub fn validate_role(name: &str) -> Result<(), NameError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(NameError::Role(name.to_owned()))
    }
}

/// The known name closest to `name` within two edits (case-insensitive), if any.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(&lower, &k.to_lowercase()), k))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// Validates role names; a name that is not known but close to a known one is a
/// probable typo unless `allow_new`. Returns the names deduplicated, in order.
pub fn check_roles(
    roles: &[String],
    known: &[&str],
    allow_new: bool,
) -> Result<Vec<String>, NameError> {
    let mut checked: Vec<String> = Vec::with_capacity(roles.len());
    for role in roles {
        validate_role(role)?;
        if !allow_new
            && !known.contains(&role.as_str())
            && let Some(nearest) = nearest(role, known.iter().copied())
        {
            return Err(NameError::ProbableTypo {
                name: role.clone(),
                nearest: nearest.to_owned(),
            });
        }
        if !checked.contains(role) {
            checked.push(role.clone());
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_must_have_one_at() {
        assert_eq!(
            normalize_email(" Ann@Example.COM "),
            Ok("ann@example.com".into())
        );
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "a b@example.com",
            "a@b@c",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_typos_suggest_the_nearest_known_role() {
        let known = BUILTIN_USER_ROLES;
        assert_eq!(
            check_roles(&["admn".into()], known, false),
            Err(NameError::ProbableTypo {
                name: "admn".into(),
                nearest: "admin".into()
            })
        );
        assert_eq!(
            check_roles(&["admn".into()], known, true),
            Ok(vec!["admn".into()])
        );
        // A name far from every known role is a new custom role.
        assert_eq!(
            check_roles(&["MyService-subscriber".into()], known, false),
            Ok(vec!["MyService-subscriber".into()])
        );
        assert_eq!(
            check_roles(&["admin".into(), "admin".into()], known, false),
            Ok(vec!["admin".into()])
        );
        assert!(matches!(
            check_roles(&["a,b".into()], known, true),
            Err(NameError::Role(_))
        ));
    }
}
