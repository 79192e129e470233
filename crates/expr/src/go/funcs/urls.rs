//! Sprig's `urlParse` and `urlJoin`, over a port of Go's `net/url` parsing and printing
//! (`url.Parse`, `URL.String`). The `url` crate follows the WHATWG standard, which
//! normalises what Go keeps as written (host case, default ports, relative references
//! such as `example.com/a`), so the Go rules are reproduced here.

use std::collections::BTreeMap;

use super::super::exec::{Exec, Fail, R};
use super::super::printf::go_quote;
use super::super::value::Val;
use super::P::*;
use super::{FuncDef, alloc, def, s, text};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("urlParse", &[Str], None, |e, a| {
            let raw = text(&a[0]);
            alloc(e, raw.len() * 3 + 64)?;
            let u = parse(raw).map_err(|err| Fail::msg(format!("unable to parse url: {err}")))?;
            let mut m = BTreeMap::new();
            m.insert("scheme".to_string(), s(u.scheme.as_str()));
            m.insert("host".to_string(), s(u.host.as_str()));
            m.insert("hostname".to_string(), s(hostname(&u.host)));
            m.insert("path".to_string(), s(u.path.as_str()));
            m.insert("query".to_string(), s(u.raw_query.as_str()));
            m.insert("opaque".to_string(), s(u.opaque.as_str()));
            m.insert("fragment".to_string(), s(u.fragment.as_str()));
            m.insert(
                "userinfo".to_string(),
                s(u.user.as_ref().map(User::string).unwrap_or_default()),
            );
            Ok(Val::map(m))
        }),
        def("urlJoin", &[Map], None, url_join),
    ]
}

fn url_join(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let Val::Map(m) = &a[0] else {
        return Err(Fail::msg(
            "wrong type for value; expected map[string]interface {}; got <nil>",
        ));
    };
    let m = m.borrow();
    let get = |key: &str| -> R<String> {
        match m.get(key) {
            None => Ok(String::new()),
            Some(Val::Str(t) | Val::Number(t)) => Ok(t.to_string()),
            Some(other) => Err(Fail::msg(format!(
                "unable to parse {key} key, must be of type string, but {} found",
                other.kind_name()
            ))),
        }
    };
    let mut u = Url {
        scheme: get("scheme")?,
        host: get("host")?,
        path: get("path")?,
        raw_query: get("query")?,
        opaque: get("opaque")?,
        fragment: get("fragment")?,
        ..Url::default()
    };
    let userinfo = get("userinfo")?;
    if !userinfo.is_empty() {
        let tmp = parse(&format!("proto://{userinfo}@host"))
            .map_err(|err| Fail::msg(format!("unable to parse userinfo in dict: {err}")))?;
        u.user = tmp.user;
    }
    let total = u.scheme.len()
        + u.host.len()
        + u.opaque.len()
        + u.raw_query.len()
        + userinfo.len()
        + u.path.len()
        + u.fragment.len();
    alloc(e, total * 3 + 8)?;
    Ok(s(u.string()))
}

#[derive(Default, Debug)]
struct User {
    username: String,
    password: Option<String>,
}

impl User {
    fn string(&self) -> String {
        let mut out = escape(&self.username, Mode::UserPassword);
        if let Some(p) = &self.password {
            out.push(':');
            out.push_str(&escape(p, Mode::UserPassword));
        }
        out
    }
}

/// Go's `url.URL`, the fields Sprig reads and writes.
#[derive(Default, Debug)]
struct Url {
    scheme: String,
    opaque: String,
    user: Option<User>,
    host: String,
    path: String,
    raw_path: String,
    omit_host: bool,
    force_query: bool,
    raw_query: String,
    fragment: String,
    raw_fragment: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    UserPassword,
    Fragment,
}

fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if mode == Mode::Host
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => {
            return match mode {
                Mode::Path => c == b'?',
                Mode::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
                Mode::Fragment => false,
                Mode::Host => true,
            };
        }
        _ => {}
    }
    if mode == Mode::Fragment && matches!(c, b'!' | b'(' | b')' | b'*') {
        return false;
    }
    true
}

fn escape(t: &str, mode: Mode) -> String {
    let mut out = String::with_capacity(t.len());
    for &b in t.as_bytes() {
        if should_escape(b, mode) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn unhex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Go's `url.unescape`; its errors read as Go's.
fn unescape(t: &str, mode: Mode) -> Result<String, String> {
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if i + 2 >= b.len()
                    || !b[i + 1].is_ascii_hexdigit()
                    || !b[i + 2].is_ascii_hexdigit()
                {
                    let rest = &b[i..];
                    let bad = String::from_utf8_lossy(&rest[..rest.len().min(3)]);
                    return Err(format!(
                        "invalid URL escape {}",
                        go_quote(&bad, false, false)
                    ));
                }
                if mode == Mode::Host && unhex(b[i + 1]) < 8 && &t[i..i + 3] != "%25" {
                    return Err(format!(
                        "invalid URL escape {}",
                        go_quote(&t[i..i + 3], false, false)
                    ));
                }
                i += 3;
            }
            c => {
                if mode == Mode::Host && c < 0x80 && should_escape(c, mode) {
                    return Err(format!(
                        "invalid character {} in host name",
                        go_quote(&t[i..i + 1], false, false)
                    ));
                }
                i += 1;
            }
        }
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(unhex(b[i + 1]) << 4 | unhex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `url.Parse`, with Go's error text (`parse "…": …`).
fn parse(raw: &str) -> Result<Url, String> {
    let (u, frag) = raw.split_once('#').unwrap_or((raw, ""));
    let mut url = parse_no_fragment(u)
        .map_err(|err| format!("parse {}: {err}", go_quote(u, false, false)))?;
    if !frag.is_empty() {
        url.fragment = unescape(frag, Mode::Fragment)
            .map_err(|err| format!("parse {}: {err}", go_quote(raw, false, false)))?;
        let escaped = escape(&url.fragment, Mode::Fragment);
        if escaped != frag {
            url.raw_fragment = frag.to_string();
        }
    }
    Ok(url)
}

fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".into());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn parse_no_fragment(raw: &str) -> Result<Url, String> {
    if raw.bytes().any(|b| b < b' ' || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    let mut url = Url::default();
    if raw == "*" {
        url.path = "*".into();
        return Ok(url);
    }
    let (scheme, rest) = get_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    let mut rest = rest;
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        url.force_query = true;
        rest = &rest[..rest.len() - 1];
    } else if let Some((r, q)) = rest.split_once('?') {
        url.raw_query = q.to_string();
        rest = r;
    }
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            url.opaque = rest.to_string();
            return Ok(url);
        }
        let segment = rest.split('/').next().unwrap_or("");
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    if (!url.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let authority = &rest[2..];
        let (authority, r) = match authority.find('/') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        };
        let (user, host) = parse_authority(authority)?;
        url.user = user;
        url.host = host;
        rest = r;
    } else if !url.scheme.is_empty() && rest.starts_with('/') {
        url.omit_host = true;
    }
    url.path = unescape(rest, Mode::Path)?;
    if escape(&url.path, Mode::Path) != rest {
        url.raw_path = rest.to_string();
    }
    Ok(url)
}

fn valid_userinfo(t: &str) -> bool {
    t.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | ':'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
                    | '@'
            )
    })
}

fn parse_authority(authority: &str) -> Result<(Option<User>, String), String> {
    let at = authority.rfind('@');
    let host = parse_host(match at {
        Some(i) => &authority[i + 1..],
        None => authority,
    })?;
    let Some(i) = at else {
        return Ok((None, host));
    };
    let userinfo = &authority[..i];
    if !valid_userinfo(userinfo) {
        return Err("net/url: invalid userinfo".into());
    }
    let user = match userinfo.split_once(':') {
        None => User {
            username: unescape(userinfo, Mode::UserPassword)?,
            password: None,
        },
        Some((name, password)) => User {
            username: unescape(name, Mode::UserPassword)?,
            password: Some(unescape(password, Mode::UserPassword)?),
        },
    };
    Ok((Some(user), host))
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        _ if port.is_empty() => true,
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".into());
        };
        let colon_port = &host[i + 1..];
        if !valid_optional_port(colon_port) {
            return Err(format!(
                "invalid port {} after host",
                go_quote(colon_port, false, false)
            ));
        }
    } else if let Some(i) = host.rfind(':') {
        let colon_port = &host[i..];
        if !valid_optional_port(colon_port) {
            return Err(format!(
                "invalid port {} after host",
                go_quote(colon_port, false, false)
            ));
        }
    }
    unescape(host, Mode::Host)
}

/// `URL.Hostname`: the host without its port and IPv6 brackets.
fn hostname(host: &str) -> String {
    let mut h = host;
    if let Some(colon) = h.rfind(':')
        && valid_optional_port(&h[colon..])
    {
        h = &h[..colon];
    }
    if h.starts_with('[') && h.ends_with(']') && h.len() >= 2 {
        h = &h[1..h.len() - 1];
    }
    h.to_string()
}

impl Url {
    fn escaped_path(&self) -> String {
        if !self.raw_path.is_empty()
            && unescape(&self.raw_path, Mode::Path).is_ok_and(|p| p == self.path)
        {
            return self.raw_path.clone();
        }
        if self.path == "*" {
            return "*".into();
        }
        escape(&self.path, Mode::Path)
    }

    /// `URL.String`.
    fn string(&self) -> String {
        let mut buf = String::new();
        if !self.scheme.is_empty() {
            buf.push_str(&self.scheme);
            buf.push(':');
        }
        if !self.opaque.is_empty() {
            buf.push_str(&self.opaque);
        } else {
            let no_authority = self.host.is_empty() && self.user.is_none();
            // Go writes `//host` when there is a scheme or an authority, unless told to omit an
            // empty one.
            if !no_authority || (!self.scheme.is_empty() && !self.omit_host) {
                if !self.host.is_empty() || !self.path.is_empty() || self.user.is_some() {
                    buf.push_str("//");
                }
                if let Some(user) = &self.user {
                    buf.push_str(&user.string());
                    buf.push('@');
                }
                if !self.host.is_empty() {
                    buf.push_str(&escape(&self.host, Mode::Host));
                }
            }
            let path = self.escaped_path();
            if !path.is_empty() && !path.starts_with('/') && !self.host.is_empty() {
                buf.push('/');
            }
            if buf.is_empty() {
                let segment = path.split('/').next().unwrap_or("");
                if segment.contains(':') {
                    buf.push_str("./");
                }
            }
            buf.push_str(&path);
        }
        if self.force_query || !self.raw_query.is_empty() {
            buf.push('?');
            buf.push_str(&self.raw_query);
        }
        if !self.fragment.is_empty() {
            buf.push('#');
            if self.raw_fragment.is_empty()
                || unescape(&self.raw_fragment, Mode::Fragment).map_or(true, |f| f != self.fragment)
            {
                buf.push_str(&escape(&self.fragment, Mode::Fragment));
            } else {
                buf.push_str(&self.raw_fragment);
            }
        }
        buf
    }
}
