//! Which templating language a template's strings are written in: taskhook's own
//! (MiniJinja: `{{ input.name }}`, `{% if %}`) or µTask's (Go `text/template`:
//! `{{ .input.name }}`, `{{ if … }}{{ end }}`).
//!
//! A template says it with `language: go` or `language: jinja`, or leaves it to detection:
//! each templated string is looked at on its own ([`detect`]); a template whose strings show
//! both languages is refused (a template never mixes them), and one that shows neither is
//! MiniJinja.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// MiniJinja (Jinja2 syntax), taskhook's own.
    #[default]
    Jinja,
    /// Go `text/template` with µTask's functions.
    Go,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Jinja => "jinja",
            Language::Go => "go",
        }
    }
}

/// Calls `f` with every string of `v`, object keys left out.
pub fn each_string(v: &serde_json::Value, f: &mut impl FnMut(&str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(items) => items.iter().for_each(|i| each_string(i, f)),
        serde_json::Value::Object(m) => m.values().for_each(|i| each_string(i, f)),
        _ => {}
    }
}

/// Go's actions that start with a keyword.
const GO_KEYWORDS: [&str; 10] = [
    "if", "range", "with", "end", "else", "define", "template", "block", "break", "continue",
];

/// The language one string shows unambiguously, or `None` (no templating, or nothing that
/// only one of the two languages would write, such as `{{ "x" }}`).
pub fn detect(text: &str) -> Option<Language> {
    if text.contains("{%") || text.contains("{#") {
        return Some(Language::Jinja);
    }
    let mut go = false;
    let mut jinja = false;
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").unwrap_or(after.len());
        let action = after[..end].trim_start_matches('-').trim();
        rest = &after[end..];
        let first: String = action
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let go_keyword = GO_KEYWORDS.contains(&first.as_str())
            && action[first.len()..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '-');
        // Whether each byte of the action is inside a string literal: one pass, so that a
        // long string costs linear time.
        let quoted = quoted_bytes(action);
        // A raw string (`…`) is Go's alone; MiniJinja has no backquotes.
        let raw_string = action.char_indices().any(|(i, c)| c == '`' && !quoted[i]);
        if action.starts_with('.')
            || action.starts_with('$')
            || action.starts_with("/*")
            || go_keyword
            || raw_string
        {
            go = true;
        } else if crate::validate::ROOTS.contains(&first.as_str())
            || action[first.len()..].starts_with('(') && !first.is_empty()
        {
            jinja = true;
        }
        // Go reads fields after a space, a parenthesis or a pipe: `printf "%s" .input.x`.
        let bytes = action.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'.'
                && i > 0
                && matches!(bytes[i - 1], b' ' | b'\t' | b'(' | b'|')
                && bytes
                    .get(i + 1)
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && !quoted[i]
            {
                go = true;
            }
        }
    }
    match (go, jinja) {
        (true, false) => Some(Language::Go),
        (false, true) => Some(Language::Jinja),
        // Both at once in one string: Go's syntax errors will say what is wrong with it.
        (true, true) => Some(Language::Go),
        (false, false) => None,
    }
}

/// For each byte of `action`, whether the text before it ends inside a string literal
/// ("…", '…' or `…`).
fn quoted_bytes(action: &str) -> Vec<bool> {
    let mut out = vec![false; action.len() + 1];
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in action.char_indices() {
        out[i] = quote.is_some();
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => {}
        }
        for b in out.iter_mut().take(i + c.len_utf8()).skip(i + 1) {
            *b = quote.is_some();
        }
    }
    out[action.len()] = quote.is_some();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_action_is_read_in_one_pass() {
        // Quadratic reading of these would take minutes; one pass takes microseconds.
        let dots = format!("{{{{ x{} }}}}", " .a".repeat(200_000));
        assert_eq!(detect(&dots), Some(Language::Go));
        let quotes = format!("{{{{ input.x ~ \"{}\" }}}}", "`".repeat(400_000));
        assert_eq!(detect(&quotes), Some(Language::Jinja));
    }

    #[test]
    fn each_language_is_told_by_what_only_it_writes() {
        for go in [
            "{{.input.name}}",
            "{{ .step.fetch.output.id | toJson }}",
            "{{- .input.x -}}",
            "{{ if eq .input.runType \"dry\" }}x{{ end }}",
            "{{ range $i, $v := .input.list }}{{ $v }}{{ end }}",
            "{{ printf \"%s+%v\" .config.a .function_args.path | sha1sum }}",
            "{{ $x := 1 }}",
            "{{ eval `var1` }} and {{ end }}",
            "{{ (index .input.list 0) }}",
            "{{(eval `rawJSON` | fromJson).a}}",
            "{{ eval `rawDecoded` | b64RawEnc }}",
        ] {
            assert_eq!(detect(go), Some(Language::Go), "{go}");
        }
        for jinja in [
            "{{ input.name }}",
            "{{ step.fetch.output.id | tojson }}",
            "{% if input.x %}y{% endif %}",
            "{{ uuid() }}",
            "{{ now_unix() + 1 }}",
            "{# a comment #}",
            "{{ input.items | join(', ') }}",
        ] {
            assert_eq!(detect(jinja), Some(Language::Jinja), "{jinja}");
        }
        for neither in ["plain", "{{ \"x\" }}", "{{ 1 }}", "{{ \"a .b\" }}", ""] {
            assert_eq!(detect(neither), None, "{neither}");
        }
    }
}
