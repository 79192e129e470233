//! Sprig's encodings, JSON output (as `encoding/json` writes it: keys sorted, HTML
//! characters escaped except by the `Raw` forms), digests, UUIDs and slash-separated
//! paths.

use base64::Engine as _;
use sha2::Digest as _;

use super::super::exec::{Exec, Fail, R};
use super::super::value::{Capped, JsonError, Val};
use super::P::*;
use super::{FuncDef, alloc, def, s, text};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("b64enc", &[Str], None, |e, a| {
            let t = text(&a[0]);
            alloc(e, t.len() / 3 * 4 + 4)?;
            Ok(s(base64::engine::general_purpose::STANDARD.encode(t)))
        }),
        def("b64dec", &[Str], None, |e, a| {
            let t = text(&a[0]);
            alloc(e, t.len())?;
            // Sprig gives the error's text as the result.
            Ok(s(
                match base64::engine::general_purpose::STANDARD.decode(t) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(err) => go_base64_error(&err),
                },
            ))
        }),
        def("b32enc", &[Str], None, |e, a| {
            let t = text(&a[0]);
            alloc(e, t.len() / 5 * 8 + 8)?;
            Ok(s(base32_encode(t.as_bytes())))
        }),
        def("b32dec", &[Str], None, |e, a| {
            let t = text(&a[0]);
            alloc(e, t.len())?;
            Ok(s(match base32_decode(t) {
                Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                None => "illegal base32 data".to_string(),
            }))
        }),
        def("toJson", &[Any], None, |e, a| {
            json(e, &a[0], true, None, false)
        }),
        def("mustToJson", &[Any], None, |e, a| {
            json(e, &a[0], true, None, true)
        }),
        def("toPrettyJson", &[Any], None, |e, a| {
            json(e, &a[0], true, Some("  "), false)
        }),
        def("mustToPrettyJson", &[Any], None, |e, a| {
            json(e, &a[0], true, Some("  "), true)
        }),
        def("toRawJson", &[Any], None, |e, a| {
            json(e, &a[0], false, None, true)
        }),
        def("mustToRawJson", &[Any], None, |e, a| {
            json(e, &a[0], false, None, true)
        }),
        def("sha1sum", &[Str], None, |_, a| {
            Ok(s(hex::encode(sha1::Sha1::digest(text(&a[0]).as_bytes()))))
        }),
        def("sha256sum", &[Str], None, |_, a| {
            Ok(s(hex::encode(sha2::Sha256::digest(text(&a[0]).as_bytes()))))
        }),
        def("sha512sum", &[Str], None, |_, a| {
            Ok(s(hex::encode(sha2::Sha512::digest(text(&a[0]).as_bytes()))))
        }),
        def("adler32sum", &[Str], None, |_, a| {
            Ok(s(adler32(text(&a[0]).as_bytes()).to_string()))
        }),
        def("uuidv4", &[], None, |_, _| {
            Ok(s(uuid::Uuid::new_v4().to_string()))
        }),
        def("base", &[Str], None, |e, a| path_fn(e, &a[0], base)),
        def("osBase", &[Str], None, |e, a| path_fn(e, &a[0], base)),
        def("dir", &[Str], None, |e, a| path_fn(e, &a[0], dir)),
        def("osDir", &[Str], None, |e, a| path_fn(e, &a[0], dir)),
        def("clean", &[Str], None, |e, a| path_fn(e, &a[0], clean)),
        def("osClean", &[Str], None, |e, a| path_fn(e, &a[0], clean)),
        def("ext", &[Str], None, |e, a| path_fn(e, &a[0], ext)),
        def("osExt", &[Str], None, |e, a| path_fn(e, &a[0], ext)),
        def("isAbs", &[Str], None, |_, a| {
            Ok(Val::Bool(text(&a[0]).starts_with('/')))
        }),
        def("osIsAbs", &[Str], None, |_, a| {
            Ok(Val::Bool(text(&a[0]).starts_with('/')))
        }),
    ]
}

/// A value as JSON text within the rendering's byte budget; `must` forms fail on a
/// value JSON cannot hold (NaN), the others give `""` as Sprig does.
pub(crate) fn json(
    e: &mut Exec<'_>,
    v: &Val,
    escape_html: bool,
    indent: Option<&str>,
    must: bool,
) -> R<Val> {
    let mut out = Capped::new(e.budget.bytes_left());
    match out.write_json(v, escape_html, indent) {
        Ok(()) => {
            alloc(e, out.text.len())?;
            Ok(s(out.text))
        }
        Err(JsonError::Overflow) => Err(e.budget.stop()),
        Err(JsonError::Unsupported(message)) if must => Err(Fail::msg(message)),
        Err(JsonError::Unsupported(_)) => Ok(s("")),
    }
}

fn go_base64_error(err: &base64::DecodeError) -> String {
    let offset = match err {
        base64::DecodeError::InvalidByte(i, _) => *i,
        base64::DecodeError::InvalidLength(i) => *i,
        base64::DecodeError::InvalidLastSymbol(i, _) => *i,
        base64::DecodeError::InvalidPadding => 0,
    };
    format!("illegal base64 data at input byte {offset}")
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    for chunk in data.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = u64::from_be_bytes([0, 0, 0, buf[0], buf[1], buf[2], buf[3], buf[4]]);
        let chars = match chunk.len() {
            1 => 2,
            2 => 4,
            3 => 5,
            4 => 7,
            _ => 8,
        };
        for i in 0..8 {
            if i < chars {
                out.push(B32[((n >> (35 - i * 5)) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base32_decode(t: &str) -> Option<Vec<u8>> {
    let t = t.trim_end_matches('=');
    let mut bits = 0u64;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in t.bytes() {
        let v = B32.iter().position(|&b| b == c)? as u64;
        bits = (bits << 5) | v;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn path_fn(e: &mut Exec<'_>, v: &Val, f: fn(&str) -> String) -> R<Val> {
    let t = text(v);
    alloc(e, t.len() + 1)?;
    Ok(s(f(t)))
}

/// Go's `path.Clean`.
pub(crate) fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn base(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".into();
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

fn dir(p: &str) -> String {
    let cut = p.rfind('/').map_or(0, |i| i + 1);
    clean(&p[..cut])
}

fn ext(p: &str) -> String {
    for (i, c) in p.char_indices().rev() {
        if c == '/' {
            break;
        }
        if c == '.' {
            return p[i..].to_string();
        }
    }
    String::new()
}
