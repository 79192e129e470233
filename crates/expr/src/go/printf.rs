//! Go's `fmt.Sprintf` for template values: flags `+ - # 0 space`, width and precision
//! (`*` too), argument indexes (`%[2]d`), the verbs `v T t b c d o O q x X U e E f F g G
//! s %`, and Go's complaints in the text (`%!d(string=a)`, `%!s(MISSING)`,
//! `%!(EXTRA int=1)`). Widths are paid for before padding is written.

use super::exec::{Exec, R};
use super::value::{Capped, IntType, Val, format_float_e, format_float_f, format_float_g};

#[derive(Default, Clone, Copy)]
struct Spec {
    plus: bool,
    minus: bool,
    sharp: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

pub(crate) fn sprintf(e: &mut Exec<'_>, format: &str, args: &[Val]) -> R<String> {
    let cap = e.budget.bytes_left();
    let mut out = Capped::new(cap);
    let stop = |e: &Exec<'_>| e.budget.stop();
    let mut next_arg = 0usize;
    let mut reordered = false;
    let mut chars = format.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            out.push(c).map_err(|_| stop(e))?;
            continue;
        }
        let mut spec = Spec::default();
        // Flags.
        while let Some(&(_, f)) = chars.peek() {
            match f {
                '+' => spec.plus = true,
                '-' => spec.minus = true,
                '#' => spec.sharp = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                _ => break,
            }
            chars.next();
        }
        let mut read_index = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
                              next_arg: &mut usize| {
            if chars.peek().map(|p| p.1) == Some('[') {
                chars.next();
                let mut n = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    chars.next();
                    if d == ']' {
                        break;
                    }
                    n.push(d);
                }
                if let Ok(i) = n.parse::<usize>()
                    && i >= 1
                {
                    *next_arg = i - 1;
                    reordered = true;
                }
            }
        };
        read_index(&mut chars, &mut next_arg);
        // Width.
        if chars.peek().map(|p| p.1) == Some('*') {
            chars.next();
            if let Some(Val::Int(w, _)) = args.get(next_arg) {
                if *w < 0 {
                    spec.minus = true;
                }
                spec.width = Some(w.unsigned_abs() as usize);
            } else {
                out.push_str("%!(BADWIDTH)").map_err(|_| stop(e))?;
            }
            next_arg += 1;
        } else {
            spec.width = digits(&mut chars);
        }
        // Precision.
        if chars.peek().map(|p| p.1) == Some('.') {
            chars.next();
            read_index(&mut chars, &mut next_arg);
            if chars.peek().map(|p| p.1) == Some('*') {
                chars.next();
                match args.get(next_arg) {
                    Some(Val::Int(p, _)) if *p >= 0 => spec.prec = Some(*p as usize),
                    _ => out.push_str("%!(BADPREC)").map_err(|_| stop(e))?,
                }
                next_arg += 1;
            } else {
                spec.prec = Some(digits(&mut chars).unwrap_or(0));
            }
        }
        read_index(&mut chars, &mut next_arg);
        let Some((_, verb)) = chars.next() else {
            out.push_str("%!(NOVERB)").map_err(|_| stop(e))?;
            break;
        };
        // A width or precision is padding paid for before it is written.
        let asked = spec.width.unwrap_or(0).max(spec.prec.unwrap_or(0));
        if asked > out.cap.saturating_sub(out.text.len()) {
            return Err(e.budget.stop());
        }
        if verb == '%' {
            out.push('%').map_err(|_| stop(e))?;
            continue;
        }
        let Some(arg) = args.get(next_arg) else {
            out.push_str(&format!("%!{verb}(MISSING)"))
                .map_err(|_| stop(e))?;
            continue;
        };
        next_arg += 1;
        let piece = format_one(verb, spec, arg, &mut out.cap.saturating_sub(out.text.len()))
            .ok_or_else(|| e.budget.stop())?;
        out.push_str(&piece).map_err(|_| stop(e))?;
    }
    if !reordered && next_arg < args.len() {
        out.push_str("%!(EXTRA ").map_err(|_| stop(e))?;
        for (i, a) in args[next_arg..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ").map_err(|_| stop(e))?;
            }
            let mut room = out.cap.saturating_sub(out.text.len());
            let shown =
                format_one('v', Spec::default(), a, &mut room).ok_or_else(|| e.budget.stop())?;
            out.push_str(&format!("{}={}", a.type_name(), shown))
                .map_err(|_| stop(e))?;
        }
        out.push(')').map_err(|_| stop(e))?;
    }
    e.budget.take(out.text.len())?;
    Ok(out.text)
}

fn digits(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(&(_, d)) = chars.peek() {
        let Some(v) = d.to_digit(10) else { break };
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(v as usize));
        chars.next();
    }
    n
}

/// One verb applied to one value, or `None` when it would not fit in `room` bytes.
fn format_one(verb: char, spec: Spec, v: &Val, room: &mut usize) -> Option<String> {
    if verb == 'T' {
        return pad(v.type_name().to_string(), spec, false);
    }
    let body = match (verb, v) {
        (_, Val::List(items)) => {
            let mut s = String::from("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                let inner = format_one(
                    verb,
                    Spec {
                        width: spec.width,
                        ..spec
                    },
                    item,
                    room,
                )?;
                if s.len() + inner.len() > *room {
                    return None;
                }
                s.push_str(&inner);
            }
            s.push(']');
            return Some(s);
        }
        (_, Val::Map(m)) => {
            let mut s = String::from("map[");
            for (i, (k, item)) in m.borrow().iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                let key = format_one(verb, spec, &Val::str(k.as_str()), room)?;
                let inner = format_one(verb, spec, item, room)?;
                if s.len() + key.len() + inner.len() + 1 > *room {
                    return None;
                }
                s.push_str(&key);
                s.push(':');
                s.push_str(&inner);
            }
            s.push(']');
            return Some(s);
        }
        ('v', Val::Missing | Val::Nil) => "<nil>".to_string(),
        (_, Val::Missing | Val::Nil) => format!("%!{verb}(<nil>)"),
        ('v' | 's', Val::Str(s) | Val::Number(s)) => truncate(s, spec.prec),
        ('q', Val::Str(s) | Val::Number(s)) => {
            go_quote(&truncate(s, spec.prec), spec.sharp, spec.plus)
        }
        ('x' | 'X', Val::Str(s) | Val::Number(s)) => {
            let t = truncate(s, spec.prec);
            let mut h = String::new();
            for (i, b) in t.bytes().enumerate() {
                if spec.space && i > 0 {
                    h.push(' ');
                }
                if spec.sharp && (spec.space || i == 0) {
                    h.push_str(if verb == 'x' { "0x" } else { "0X" });
                }
                h.push_str(&if verb == 'x' {
                    format!("{b:02x}")
                } else {
                    format!("{b:02X}")
                });
            }
            h
        }
        ('v' | 't', Val::Bool(b)) => b.to_string(),
        ('v' | 'd', Val::Int(i, _)) => sign(*i < 0, i.unsigned_abs().to_string(), spec),
        ('b', Val::Int(i, _)) => sign(*i < 0, format!("{:b}", i.unsigned_abs()), spec),
        ('o' | 'O', Val::Int(i, _)) => {
            let mut d = format!("{:o}", i.unsigned_abs());
            if verb == 'O' {
                d.insert_str(0, "0o");
            } else if spec.sharp {
                d.insert(0, '0');
            }
            sign(*i < 0, d, spec)
        }
        ('x' | 'X', Val::Int(i, _)) => {
            let mut d = if verb == 'x' {
                format!("{:x}", i.unsigned_abs())
            } else {
                format!("{:X}", i.unsigned_abs())
            };
            if spec.sharp {
                d.insert_str(0, if verb == 'x' { "0x" } else { "0X" });
            }
            sign(*i < 0, d, spec)
        }
        ('c', Val::Int(i, _)) => char::from_u32(*i as u32).unwrap_or('\u{FFFD}').to_string(),
        ('q', Val::Int(i, _)) => {
            let c = char::from_u32(*i as u32).unwrap_or('\u{FFFD}');
            format!("'{}'", c.escape_debug())
        }
        ('U', Val::Int(i, _)) => {
            let mut u = format!("U+{:04X}", i);
            if spec.sharp
                && let Some(c) = char::from_u32(*i as u32)
            {
                u.push_str(&format!(" '{c}'"));
            }
            u
        }
        ('v' | 'g' | 'G' | 'e' | 'E' | 'f' | 'F', Val::Float(f)) => {
            let prec = spec.prec;
            if prec.is_some_and(|p| p > *room) {
                return None;
            }
            let text = match verb {
                'v' | 'g' => format_float_g(*f, prec.map_or(-1, |p| p as i32)),
                'G' => format_float_g(*f, prec.map_or(-1, |p| p as i32)).to_uppercase(),
                'e' | 'E' => format_float_e(*f, prec.unwrap_or(6), verb == 'E'),
                _ => format_float_f(*f, prec.unwrap_or(6)),
            };
            let neg = text.starts_with('-');
            let digits = text.trim_start_matches('-').to_string();
            if f.is_nan() || f.is_infinite() {
                return pad(
                    if spec.plus && !neg && !f.is_nan() {
                        format!("+{digits}")
                    } else {
                        text
                    },
                    Spec {
                        zero: false,
                        ..spec
                    },
                    false,
                );
            }
            sign(neg, digits, spec)
        }
        ('v', Val::Time(t)) | ('s', Val::Time(t)) => super::value::go_time_string(t),
        ('v', Val::Struct(st)) | ('s', Val::Struct(st)) => st.print(),
        (_, other) => {
            let mut c = Capped::new(*room);
            c.write_v(other).ok()?;
            let type_name = match other {
                Val::Int(_, IntType::Int) => "int",
                o => o.type_name(),
            };
            format!("%!{verb}({type_name}={})", c.text)
        }
    };
    pad(body, spec, matches!(v, Val::Int(..) | Val::Float(_)))
}

/// A number's digits with its sign (`+` and space flags), zero-padded to the width
/// after the sign when asked.
fn sign(neg: bool, digits: String, spec: Spec) -> String {
    let sign = if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    if spec.zero
        && !spec.minus
        && let Some(w) = spec.width
        && w > sign.len() + digits.len()
    {
        let zeros = "0".repeat(w - sign.len() - digits.len());
        return format!("{sign}{zeros}{digits}");
    }
    format!("{sign}{digits}")
}

fn pad(body: String, spec: Spec, numeric: bool) -> Option<String> {
    let len = body.chars().count();
    let Some(w) = spec.width else {
        return Some(body);
    };
    if len >= w {
        return Some(body);
    }
    let fill = w - len;
    Some(if spec.minus {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero && !numeric {
        format!("{}{body}", "0".repeat(fill))
    } else {
        format!("{}{body}", " ".repeat(fill))
    })
}

fn truncate(s: &str, prec: Option<usize>) -> String {
    match prec {
        Some(p) => s.chars().take(p).collect(),
        None => s.to_string(),
    }
}

/// Go's `strconv.Quote` (`%q`), or a raw string with `#` when it can be one.
pub(crate) fn go_quote(s: &str, sharp: bool, ascii: bool) -> String {
    if sharp && !s.contains('`') && !s.chars().any(|c| c.is_control() && c != '\t') {
        return format!("`{s}`");
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || (ascii && !c.is_ascii()) => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
