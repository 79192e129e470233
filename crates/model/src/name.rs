//! Names the API addresses as one URL path segment: templates, library functions, hooks
//! (`group` and `id`) and secrets. One rule for all of them, so that every object written can
//! be read back at its URL by any client, and the OpenAPI document declares the same pattern.
//!
//! A name is 1 to `max` ASCII letters, digits, `_`, `-` and `.`, and is neither `.` nor `..`:
//! clients and proxies normalise those dot segments away (`/templates/..` becomes `/`), so an
//! object named so could be written by a raw client and never reached again. No other name
//! of these characters is changed by URL normalisation (percent-encoding and case are left
//! alone for unreserved characters).

/// Whether `name` may name an object addressed by a URL path segment (see the module
/// documentation).
pub fn is_valid(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !is_dot_segment(name)
}

/// Checks `name` with [`is_valid`]; the error says what a name may be.
pub fn check(name: &str, max: usize) -> Result<(), String> {
    if is_valid(name, max) {
        Ok(())
    } else {
        Err(rule(max))
    }
}

/// What a valid name is, for error messages.
pub fn rule(max: usize) -> String {
    format!("must be 1-{max} letters, digits, '_', '-' or '.', and neither '.' nor '..'")
}

/// `.` and `..`: the segments a URL path normaliser removes.
pub fn is_dot_segment(name: &str) -> bool {
    matches!(name, "." | "..")
}

/// One name, as a regular expression without anchors or length bounds: a first character
/// that is not a dot; or a dot, then one that is not; or two dots and more. Written without
/// lookaround so that every regex engine reads it.
const PART: &str =
    r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.\.[A-Za-z0-9_.-]+)";

/// The regular expression of a valid name, as the OpenAPI document declares it beside a
/// `maxLength`: the same rule as [`is_valid`] (a test checks that the two agree).
pub fn pattern() -> String {
    format!("^{PART}$")
}

/// The regular expression of a library function's name: valid names joined by `::`
/// (namespaces), as [`is_valid_function`] checks it.
pub fn function_pattern() -> String {
    format!("^{PART}(?:::{PART})*$")
}

/// Whether `name` may name a library function: at most `max` characters in all, valid names
/// joined by `::`.
pub fn is_valid_function(name: &str, max: usize) -> bool {
    name.len() <= max && name.split("::").all(|part| is_valid(part, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_refused_and_dotted_names_are_not() {
        for bad in [".", "..", "", "a/b", "a b", "é", "a%2e", "a\0"] {
            assert!(!is_valid(bad, 64), "{bad:?}");
        }
        for good in ["a", "...", ".a", "a.", "a..b", ".hidden", "v1.2", "a-b_c"] {
            assert!(is_valid(good, 64), "{good:?}");
        }
        assert!(is_valid(&"a".repeat(64), 64));
        assert!(!is_valid(&"a".repeat(65), 64));
        assert!(check("..", 64).unwrap_err().contains("'..'"));
    }

    #[test]
    fn the_patterns_are_the_rules() {
        let name = regex::Regex::new(&pattern()).unwrap();
        let function = regex::Regex::new(&function_pattern()).unwrap();
        // Every string of up to 5 characters over a small alphabet.
        let alphabet = ['a', '.', '-', '/', ':', ' '];
        let mut names = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            frontier = frontier
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(frontier.iter().cloned());
        }
        for n in &names {
            assert_eq!(name.is_match(n), is_valid(n, 64), "{n:?}");
            assert_eq!(function.is_match(n), is_valid_function(n, 64), "{n:?}");
        }
        assert!(is_valid_function("ns::fetch", 64));
        assert!(!is_valid_function("ns::..", 64));
    }
}
