//! Sprig's string functions (argument order as Sprig's: the string last, so they read
//! well in pipelines), its regular expressions (Rust's `regex`, whose syntax and `$1`
//! expansion match Go's RE2 for what templates use) and random strings.

use super::super::exec::{Exec, Fail, R};
use super::super::printf::go_quote;
use super::super::value::{Capped, Val};
use super::P::*;
use super::{FuncDef, alloc, def, int, s, strval, text};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("hello", &[], None, |_, _| Ok(s("Hello!"))),
        def("trim", &[Str], None, |e, a| {
            same_size(e, text(&a[0]).trim())
        }),
        def("trimAll", &[Str, Str], None, trim_all),
        def("trimall", &[Str, Str], None, trim_all),
        def("trimPrefix", &[Str, Str], None, |e, a| {
            let t = text(&a[1]);
            same_size(e, t.strip_prefix(text(&a[0])).unwrap_or(t))
        }),
        def("trimSuffix", &[Str, Str], None, |e, a| {
            let t = text(&a[1]);
            same_size(e, t.strip_suffix(text(&a[0])).unwrap_or(t))
        }),
        def("upper", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 4, |t| t.chars().map(go_upper).collect())
        }),
        def("lower", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 4, |t| t.chars().map(go_lower).collect())
        }),
        def("title", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 3, title)
        }),
        def("untitle", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 3, untitle)
        }),
        def("swapcase", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 3, swapcase)
        }),
        def("initials", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 1, initials)
        }),
        def("nospace", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 1, |t| {
                t.chars().filter(|c| !c.is_whitespace()).collect()
            })
        }),
        def("snakecase", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 2, |t| words(t).join("_").to_lowercase())
        }),
        def("kebabcase", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 2, |t| words(t).join("-").to_lowercase())
        }),
        def("camelcase", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 3, |t| {
                words(t)
                    .iter()
                    .map(|w| capitalize(&w.to_lowercase()))
                    .collect()
            })
        }),
        def("shuffle", &[Str], None, |e, a| {
            use rand::seq::SliceRandom as _;
            let mut chars: Vec<char> = text(&a[0]).chars().collect();
            chars.shuffle(&mut rand::rng());
            let out: String = chars.into_iter().collect();
            same_size(e, &out)
        }),
        def("substr", &[Int, Int, Str], None, substr),
        def("trunc", &[Int, Str], None, |e, a| {
            let (c, t) = (int(&a[0]), text(&a[1]));
            let len = t.len() as i64;
            let part = if c < 0 && len + c > 0 {
                byte_slice(t, (len + c) as usize, t.len())?
            } else if c >= 0 && len > c {
                byte_slice(t, 0, c as usize)?
            } else {
                t
            };
            same_size(e, part)
        }),
        def("abbrev", &[Int, Str], None, |e, a| {
            let (w, t) = (int(&a[0]), text(&a[1]));
            if w < 4 {
                return same_size(e, t);
            }
            let out = abbreviate(t, 0, w as usize)?;
            same_size(e, &out)
        }),
        def("abbrevboth", &[Int, Int, Str], None, |e, a| {
            let (left, right, t) = (int(&a[0]), int(&a[1]), text(&a[2]));
            if right < 4 || (left > 0 && right < 7) {
                return same_size(e, t);
            }
            let out = abbreviate(t, left.max(0) as usize, right as usize)?;
            same_size(e, &out)
        }),
        def("repeat", &[Int, Str], None, |e, a| {
            let (n, t) = (int(&a[0]), text(&a[1]));
            if n < 0 {
                return Err(Fail::msg("strings: negative Repeat count"));
            }
            let total = (n as usize)
                .checked_mul(t.len())
                .ok_or_else(|| e.budget.stop())?;
            alloc(e, total)?;
            Ok(s(t.repeat(n as usize)))
        }),
        def("contains", &[Str, Str], None, |_, a| {
            Ok(Val::Bool(text(&a[1]).contains(text(&a[0]))))
        }),
        def("hasPrefix", &[Str, Str], None, |_, a| {
            Ok(Val::Bool(text(&a[1]).starts_with(text(&a[0]))))
        }),
        def("hasSuffix", &[Str, Str], None, |_, a| {
            Ok(Val::Bool(text(&a[1]).ends_with(text(&a[0]))))
        }),
        def("quote", &[], Some(Any), |e, a| {
            let mut parts = Vec::new();
            for v in a.iter().filter(|v| !v.is_nil()) {
                let t = strval(e, v)?;
                alloc(e, t.len() * 10 + 2)?;
                parts.push(go_quote(&t, false, false));
            }
            Ok(s(parts.join(" ")))
        }),
        def("squote", &[], Some(Any), |e, a| {
            let mut parts = Vec::new();
            for v in a.iter().filter(|v| !v.is_nil()) {
                let t = strval(e, v)?;
                alloc(e, t.len() + 2)?;
                parts.push(format!("'{t}'"));
            }
            Ok(s(parts.join(" ")))
        }),
        def("cat", &[], Some(Any), |e, a| {
            let mut parts = Vec::new();
            for v in a.iter().filter(|v| !v.is_nil()) {
                parts.push(strval(e, v)?);
            }
            let total: usize = parts.iter().map(|p| p.len() + 1).sum();
            alloc(e, total)?;
            Ok(s(parts.join(" ")))
        }),
        def("indent", &[Int, Str], None, |e, a| {
            indent(e, int(&a[0]), text(&a[1]), false)
        }),
        def("nindent", &[Int, Str], None, |e, a| {
            indent(e, int(&a[0]), text(&a[1]), true)
        }),
        def("replace", &[Str, Str, Str], None, |e, a| {
            let (old, new, src) = (text(&a[0]), text(&a[1]), text(&a[2]));
            // Go's Replace with an empty `old` inserts `new` around every character.
            let count = if old.is_empty() {
                src.chars().count() + 1
            } else {
                src.matches(old).count()
            };
            let total = count
                .checked_mul(new.len())
                .and_then(|n| n.checked_add(src.len()))
                .ok_or_else(|| e.budget.stop())?;
            alloc(e, total)?;
            if old.is_empty() {
                let mut out = String::with_capacity(total);
                out.push_str(new);
                for c in src.chars() {
                    out.push(c);
                    out.push_str(new);
                }
                return Ok(s(out));
            }
            Ok(s(src.replace(old, new)))
        }),
        def("plural", &[Str, Str, Int], None, |_, a| {
            Ok(if int(&a[2]) == 1 {
                a[0].clone()
            } else {
                a[1].clone()
            })
        }),
        def("wrap", &[Int, Str], None, |e, a| {
            let out = wrap(text(&a[1]), int(&a[0]), "\n", false);
            same_size(e, &out)
        }),
        def("wrapWith", &[Int, Str, Str], None, |e, a| {
            let (w, sep, t) = (int(&a[0]), text(&a[1]), text(&a[2]));
            alloc(e, t.len().saturating_mul(sep.len().max(1)))?;
            Ok(s(wrap(t, w, sep, true)))
        }),
        def("toString", &[Any], None, |e, a| {
            Ok(Val::Str(strval(e, &a[0])?))
        }),
        def("split", &[Str, Str], None, |e, a| {
            let parts = go_split(text(&a[1]), text(&a[0]), -1);
            numbered(e, parts)
        }),
        def("splitn", &[Str, Int, Str], None, |e, a| {
            let parts = go_split(text(&a[2]), text(&a[0]), int(&a[1]));
            numbered(e, parts)
        }),
        def("splitList", &[Str, Str], None, |e, a| {
            let parts = go_split(text(&a[1]), text(&a[0]), -1);
            alloc(e, parts.len() * 16 + text(&a[1]).len())?;
            Ok(Val::list(parts.into_iter().map(s).collect()))
        }),
        def("join", &[Str, Any], None, |e, a| {
            let parts = strslice(e, &a[1])?;
            let sep = text(&a[0]);
            let total: usize = parts.iter().map(|p| p.len() + sep.len()).sum();
            alloc(e, total)?;
            Ok(s(parts.iter().map(|p| &**p).collect::<Vec<_>>().join(sep)))
        }),
        def("toStrings", &[Any], None, |e, a| {
            let parts = strslice(e, &a[0])?;
            Ok(Val::list(parts.into_iter().map(Val::Str).collect()))
        }),
        def("sortAlpha", &[Any], None, |e, a| {
            let mut parts = match &a[0] {
                Val::List(_) => strslice(e, &a[0])?,
                other => vec![strval(e, other)?],
            };
            e.budget.steps(parts.len() as u64)?;
            parts.sort();
            Ok(Val::list(parts.into_iter().map(Val::Str).collect()))
        }),
        def("regexMatch", &[Str, Str], None, |_, a| {
            Ok(Val::Bool(
                regex::Regex::new(text(&a[0])).is_ok_and(|r| r.is_match(text(&a[1]))),
            ))
        }),
        def("mustRegexMatch", &[Str, Str], None, |_, a| {
            Ok(Val::Bool(re(&a[0])?.is_match(text(&a[1]))))
        }),
        def("regexFind", &[Str, Str], None, regex_find),
        def("mustRegexFind", &[Str, Str], None, regex_find),
        def("regexFindAll", &[Str, Str, Int], None, regex_find_all),
        def("mustRegexFindAll", &[Str, Str, Int], None, regex_find_all),
        def("regexReplaceAll", &[Str, Str, Str], None, |e, a| {
            regex_replace(e, a, false)
        }),
        def("mustRegexReplaceAll", &[Str, Str, Str], None, |e, a| {
            regex_replace(e, a, false)
        }),
        def("regexReplaceAllLiteral", &[Str, Str, Str], None, |e, a| {
            regex_replace(e, a, true)
        }),
        def(
            "mustRegexReplaceAllLiteral",
            &[Str, Str, Str],
            None,
            |e, a| regex_replace(e, a, true),
        ),
        def("regexSplit", &[Str, Str, Int], None, regex_split),
        def("mustRegexSplit", &[Str, Str, Int], None, regex_split),
        def("regexQuoteMeta", &[Str], None, |e, a| {
            grown(e, text(&a[0]), 2, regex::escape)
        }),
        def("randAlphaNum", &[Int], None, |e, a| random(e, &a[0], ALNUM)),
        def("randAlpha", &[Int], None, |e, a| random(e, &a[0], ALPHA)),
        def("randNumeric", &[Int], None, |e, a| {
            random(e, &a[0], b"0123456789")
        }),
        def("randAscii", &[Int], None, |e, a| {
            let printable: Vec<u8> = (32u8..=126).collect();
            random(e, &a[0], &printable)
        }),
        def("fail", &[Str], None, |_, a| {
            Err(Fail::msg(text(&a[0]).to_string()))
        }),
    ]
}

/// A result no longer than its input: paid for, then made.
fn same_size(e: &mut Exec<'_>, t: &str) -> R<Val> {
    alloc(e, t.len())?;
    Ok(s(t))
}

/// A result at most `factor` times its input.
fn grown(e: &mut Exec<'_>, t: &str, factor: usize, f: impl Fn(&str) -> String) -> R<Val> {
    alloc(e, t.len().saturating_mul(factor))?;
    Ok(s(f(t)))
}

fn trim_all(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let cut = text(&a[0]);
    same_size(e, text(&a[1]).trim_matches(|c| cut.contains(c)))
}

fn byte_slice(t: &str, from: usize, to: usize) -> R<&str> {
    if from > to || to > t.len() {
        return Err(Fail::msg(format!(
            "slice bounds out of range [{from}:{to}]"
        )));
    }
    t.get(from..to)
        .ok_or_else(|| Fail::msg(format!("slice [{from}:{to}] splits a character")))
}

/// Sprig's `substr`: a negative start means from 0, an end past the length means to the
/// end; other bad bounds fail as Go's slicing panics.
fn substr(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let (start, end, t) = (int(&a[0]), int(&a[1]), text(&a[2]));
    let len = t.len() as i64;
    let part = if start < 0 {
        if end < 0 {
            return Err(Fail::msg(format!("slice bounds out of range [:{end}]")));
        }
        byte_slice(t, 0, end as usize)?
    } else if end < 0 || end > len {
        if start > len {
            return Err(Fail::msg(format!(
                "slice bounds out of range [{start}:{len}]"
            )));
        }
        byte_slice(t, start as usize, t.len())?
    } else {
        byte_slice(t, start as usize, end as usize)?
    };
    same_size(e, part)
}

/// Go's `unicode.ToUpper`: one character for one (`ß` stays `ß`, where Rust's
/// full mapping gives `SS`).
fn go_upper(c: char) -> char {
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Go's `unicode.ToLower`: one character for one (`İ` becomes `i`).
fn go_lower(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// Go's deprecated `strings.Title`: a letter after a separator becomes upper case.
fn title(t: &str) -> String {
    let is_sep = |c: char| {
        if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else {
            !c.is_alphanumeric() && c.is_whitespace()
        }
    };
    let mut prev = ' ';
    t.chars()
        .map(|c| {
            let out = if is_sep(prev) { go_upper(c) } else { c };
            prev = c;
            out
        })
        .collect()
}

fn untitle(t: &str) -> String {
    let mut prev_space = true;
    t.chars()
        .map(|c| {
            let out = if prev_space { go_lower(c) } else { c };
            prev_space = c.is_whitespace();
            out
        })
        .collect()
}

fn swapcase(t: &str) -> String {
    t.chars()
        .map(|c| {
            if c.is_uppercase() {
                go_lower(c)
            } else if c.is_lowercase() {
                go_upper(c)
            } else {
                c
            }
        })
        .collect()
}

fn initials(t: &str) -> String {
    t.split_whitespace()
        .filter_map(|w| w.chars().next())
        .collect()
}

fn capitalize(w: &str) -> String {
    let mut cs = w.chars();
    match cs.next() {
        Some(f) => f.to_uppercase().chain(cs).collect(),
        None => String::new(),
    }
}

/// Words of an identifier-like text: split at separators, at a lower-to-upper change
/// (`firstName`) and before the last capital of a run (`HTTPServer`).
fn words(t: &str) -> Vec<String> {
    let chars: Vec<char> = t.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_uppercase() && !cur.is_empty() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// goutils' `AbbreviateFull`: at most `width` bytes with `...` where text was cut.
fn abbreviate(t: &str, offset: usize, width: usize) -> R<String> {
    let cut = |from: usize, to: usize| -> R<&str> { byte_slice(t, from, to) };
    if t.is_empty() || t.len() <= width {
        return Ok(t.to_string());
    }
    let mut offset = offset.min(t.len());
    if t.len() - offset < width - 3 {
        offset = t.len() - (width - 3);
    }
    if offset <= 4 {
        return Ok(format!("{}...", cut(0, width - 3)?));
    }
    if width < 7 {
        return Err(Fail::msg("minimum abbreviation width with offset is 7"));
    }
    if offset + width - 3 < t.len() {
        let rest = abbreviate(cut(offset, t.len())?, 0, width - 3)?;
        return Ok(format!("...{rest}"));
    }
    Ok(format!("...{}", cut(t.len() - (width - 3), t.len())?))
}

fn indent(e: &mut Exec<'_>, spaces: i64, t: &str, leading_newline: bool) -> R<Val> {
    let n = spaces.max(0) as usize;
    let lines = t.matches('\n').count() + 1;
    let total = lines
        .checked_mul(n)
        .and_then(|x| x.checked_add(t.len() + 1))
        .ok_or_else(|| e.budget.stop())?;
    alloc(e, total)?;
    let pad = " ".repeat(n);
    let mut out = String::with_capacity(total);
    if leading_newline {
        out.push('\n');
    }
    out.push_str(&pad);
    out.push_str(&t.replace('\n', &format!("\n{pad}")));
    Ok(s(out))
}

/// goutils' `WrapCustom`: lines of at most `width` characters broken at spaces; a word
/// longer than a line is broken only when `long_words`.
fn wrap(t: &str, width: i64, sep: &str, long_words: bool) -> String {
    let width = width.max(1) as usize;
    let mut out = String::new();
    for (li, line) in t.split('\n').enumerate() {
        if li > 0 {
            out.push_str(sep);
        }
        let mut cur = String::new();
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            let mut word = word.to_string();
            loop {
                let cur_len = cur.chars().count();
                let word_len = word.chars().count();
                if cur.is_empty() && word_len > width && long_words {
                    let head: String = word.chars().take(width).collect();
                    out.push_str(&head);
                    out.push_str(sep);
                    word = word.chars().skip(width).collect();
                    continue;
                }
                if cur.is_empty() {
                    cur = word;
                } else if cur_len + 1 + word_len <= width {
                    cur.push(' ');
                    cur.push_str(&word);
                } else {
                    out.push_str(&cur);
                    out.push_str(sep);
                    cur = String::new();
                    continue;
                }
                break;
            }
        }
        out.push_str(&cur);
    }
    out
}

/// Go's `strings.SplitN` (`n` < 0: all; 0: none; an empty separator splits characters).
fn go_split(t: &str, sep: &str, n: i64) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    if sep.is_empty() {
        let chars: Vec<String> = t.chars().map(String::from).collect();
        if n > 0 && chars.len() > n as usize {
            let head = &chars[..n as usize - 1];
            let rest: String = chars[n as usize - 1..].concat();
            return head.iter().cloned().chain(std::iter::once(rest)).collect();
        }
        return chars;
    }
    if n < 0 {
        t.split(sep).map(String::from).collect()
    } else {
        t.splitn(n as usize, sep).map(String::from).collect()
    }
}

/// Sprig's `split` result: a map `_0`, `_1`, ….
fn numbered(e: &mut Exec<'_>, parts: Vec<String>) -> R<Val> {
    alloc(e, parts.iter().map(|p| p.len() + 24).sum())?;
    Ok(Val::map(
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("_{i}"), s(p)))
            .collect(),
    ))
}

/// Sprig's `strslice`: a list's non-nil items as text, nothing for nil, else the value's
/// text alone.
pub(crate) fn strslice(e: &mut Exec<'_>, v: &Val) -> R<Vec<std::rc::Rc<str>>> {
    match v {
        Val::List(l) => {
            let mut out = Vec::with_capacity(l.len());
            for item in l.iter().filter(|i| !i.is_nil()) {
                e.budget.step()?;
                out.push(strval(e, item)?);
            }
            Ok(out)
        }
        Val::Missing | Val::Nil => Ok(Vec::new()),
        other => Ok(vec![strval(e, other)?]),
    }
}

fn re(v: &Val) -> R<regex::Regex> {
    regex::Regex::new(text(v)).map_err(|err| Fail::msg(format!("regexp: {err}")))
}

fn regex_find(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let r = re(&a[0])?;
    let found = r.find(text(&a[1])).map_or("", |m| m.as_str());
    same_size(e, found)
}

fn regex_find_all(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let r = re(&a[0])?;
    let n = int(&a[2]);
    let t = text(&a[1]);
    let limit = if n < 0 { usize::MAX } else { n as usize };
    let mut out = Vec::new();
    for m in r.find_iter(t).take(limit) {
        alloc(e, m.len() + 16)?;
        out.push(s(m.as_str()));
    }
    Ok(Val::list(out))
}

fn regex_split(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let r = re(&a[0])?;
    let n = int(&a[2]);
    let t = text(&a[1]);
    if n == 0 {
        return Ok(Val::list(Vec::new()));
    }
    alloc(e, t.len() + 16 * (t.len() + 1))?;
    let parts: Vec<Val> = if n < 0 {
        r.split(t).map(s).collect()
    } else {
        r.splitn(t, n as usize).map(s).collect()
    };
    Ok(Val::list(parts))
}

/// `regexReplaceAll` (with `$1` expansion) and its literal form, stopped before the
/// result outgrows what the rendering may still create.
fn regex_replace(e: &mut Exec<'_>, a: Vec<Val>, literal: bool) -> R<Val> {
    let r = re(&a[0])?;
    let (t, with) = (text(&a[1]), text(&a[2]));
    let mut out = Capped::new(e.budget.bytes_left());
    let mut last = 0;
    for caps in r.captures_iter(t) {
        e.budget.step()?;
        let Some(m) = caps.get(0) else { continue };
        out.push_str(&t[last..m.start()])
            .map_err(|_| e.budget.stop())?;
        if literal {
            out.push_str(with).map_err(|_| e.budget.stop())?;
        } else {
            let mut piece = String::new();
            caps.expand(with, &mut piece);
            out.push_str(&piece).map_err(|_| e.budget.stop())?;
        }
        last = m.end();
    }
    out.push_str(&t[last..]).map_err(|_| e.budget.stop())?;
    alloc(e, out.text.len())?;
    Ok(s(out.text))
}

const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn random(e: &mut Exec<'_>, count: &Val, alphabet: &[u8]) -> R<Val> {
    use rand::Rng as _;
    let n = int(count);
    if n < 0 {
        return Err(Fail::msg("count must be non-negative"));
    }
    alloc(e, n as usize)?;
    let mut rng = rand::rng();
    let out: String = (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect();
    Ok(s(out))
}
