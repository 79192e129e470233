//! Scopes: what a token may do, as strings like `tasks:create:deploy` or
//! `hooks:trigger:github/*`.
//!
//! A held scope ending in `*` grants every scope it is a prefix of (without the `*`);
//! any other held scope grants exactly itself. `admin` grants everything. A required scope is
//! compared literally, so a held `tasks:*` grants a required `tasks:create:*` (minting a
//! token with a wildcard), but a held `tasks:create:deploy` does not.

/// The scope that grants everything.
pub const ADMIN: &str = "admin";

/// Whether one held scope grants `required`.
pub fn grants(held: &str, required: &str) -> bool {
    if held == ADMIN || held == required {
        return true;
    }
    match held.strip_suffix('*') {
        Some(prefix) => required.starts_with(prefix),
        None => false,
    }
}

/// Whether any of `held` grants `required`.
pub fn satisfies<S: AsRef<str>>(held: &[S], required: &str) -> bool {
    held.iter().any(|h| grants(h.as_ref(), required))
}

/// The first of `wanted` that `held` does not grant: a token may only mint tokens (or
/// give hooks) scopes it holds itself.
pub fn first_missing<'a, S: AsRef<str>>(held: &[S], wanted: &'a [String]) -> Option<&'a str> {
    wanted
        .iter()
        .map(String::as_str)
        .find(|w| !satisfies(held, w))
}

/// Longest scope.
pub const MAX_LEN: usize = 200;

/// Checks a scope's spelling: 1 to 200 printable ASCII characters without spaces, with `*`
/// only as the last character.
pub fn check(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.len() > MAX_LEN {
        return Err("a scope has 1 to 200 characters".into());
    }
    if let Some(c) = scope.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{c:?} is not allowed in a scope"));
    }
    if scope.find('*').is_some_and(|i| i != scope.len() - 1) {
        return Err("`*` may only end a scope".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_admin() {
        assert!(grants("tasks:create:deploy", "tasks:create:deploy"));
        assert!(!grants("tasks:create:deploy", "tasks:create:deploy2"));
        assert!(!grants("tasks:create:deploy", "tasks:create:*"));
        assert!(grants("tasks:create:*", "tasks:create:deploy"));
        assert!(grants("tasks:*", "tasks:create:*"));
        assert!(grants("tasks:create:dep*", "tasks:create:deploy"));
        assert!(!grants("tasks:create:*", "tasks:read:deploy"));
        assert!(grants("*", "anything:at:all"));
        assert!(grants(ADMIN, "tokens:manage"));
        assert!(!grants("tokens:manage", ADMIN));
        // No implicit hierarchy: `hooks:trigger:a/b` does not grant `hooks:trigger:a/bc`.
        assert!(!grants("hooks:trigger:a/b", "hooks:trigger:a/bc"));
    }

    #[test]
    fn minting_needs_every_scope() {
        let held = vec!["tasks:*".to_string(), "hooks:trigger:ci/build".to_string()];
        assert_eq!(
            first_missing(&held, &["tasks:read:x".into(), "tasks:create:*".into()]),
            None
        );
        assert_eq!(
            first_missing(&held, &["hooks:trigger:ci/*".into()]),
            Some("hooks:trigger:ci/*")
        );
    }

    #[test]
    fn spelling() {
        assert!(check("tasks:create:*").is_ok());
        assert!(check("admin").is_ok());
        assert!(check("").is_err());
        assert!(check("a b").is_err());
        assert!(check("a*b").is_err());
        assert!(check("*").is_ok());
    }

    /// The edges the spelling check must hold exactly (each was a surviving mutant).
    #[test]
    fn spelling_edges() {
        let at_limit = format!("tasks:read:{}", "x".repeat(200 - "tasks:read:".len()));
        assert_eq!(at_limit.len(), 200);
        assert_eq!(check(&at_limit), Ok(()));
        let wildcard_at_limit = format!("{}*", &at_limit[..199]);
        assert_eq!(check(&wildcard_at_limit), Ok(()));
        let over = format!("{at_limit}x");
        assert_eq!(check(&over), Err("a scope has 1 to 200 characters".into()));
        for two_stars in ["**", "a**", "*a*", "tasks:*:*", "*:read:x*"] {
            assert_eq!(
                check(two_stars),
                Err("`*` may only end a scope".into()),
                "{two_stars}"
            );
        }
        for (bad, c) in [
            ("tâches:*", 'â'),
            ("tasks:créer:x", 'é'),
            ("tasks\t:x", '\t'),
            ("hooks:trigger:a/\u{200b}b", '\u{200b}'),
            ("tasks:\u{7f}", '\u{7f}'),
        ] {
            assert_eq!(
                check(bad),
                Err(format!("{c:?} is not allowed in a scope")),
                "{bad:?}"
            );
        }
        // Every printable ASCII character but `*` is allowed anywhere.
        assert_eq!(check("!\"#$%&'()+,-./0-9:;<=>?@A-Z[\\]^_`a-z{|}~"), Ok(()));
    }

    /// A wildcard grants by prefix only, whatever comes after it; matching is byte-exact.
    #[test]
    fn wildcard_edges() {
        assert!(grants("tasks:*", "tasks:"));
        assert!(!grants("tasks:*", "tasks"));
        assert!(!grants("tasks:*", "Tasks:read:x"));
        assert!(!grants("tâches:*", "taches:read"));
        assert!(grants("tâches:*", "tâches:read"));
        assert!(
            !grants("admin*", "tokens:manage"),
            "only `admin` itself is admin"
        );
        assert!(grants("admin*", "admin:x"));
        assert!(!grants("", "tasks:read:x"));
        assert!(!satisfies::<&str>(&[], "tasks:read:x"));
        assert!(satisfies(&["x", "tasks:*"], "tasks:read:x"));
    }
}
