//! Sprig's arithmetic: integer functions read their arguments as spf13/cast does
//! (`"3"` is 3, `"x"` is 0) and return `int64`; the `…f` functions work in decimal in
//! Sprig, so their results are rounded to 15 significant digits here (`0.1 + 0.2` is
//! `0.3`, as there); conversions `int`, `int64`, `float64`, `atoi`.

use super::super::exec::{Exec, Fail, R};
use super::super::value::Val;
use super::P::*;
use super::{FuncDef, def, int, parse_go_int, text, to_f64, to_i64};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("add1", &[Any], None, |_, a| Ok(Val::int64(to_i64(&a[0]).wrapping_add(1)))),
        def("add", &[], Some(Any), |_, a| {
            Ok(Val::int64(a.iter().fold(0i64, |acc, v| acc.wrapping_add(to_i64(v)))))
        }),
        def("sub", &[Any, Any], None, |_, a| {
            Ok(Val::int64(to_i64(&a[0]).wrapping_sub(to_i64(&a[1]))))
        }),
        def("mul", &[Any], Some(Any), |_, a| {
            Ok(Val::int64(a[1..].iter().fold(to_i64(&a[0]), |acc, v| acc.wrapping_mul(to_i64(v)))))
        }),
        def("div", &[Any, Any], None, |_, a| {
            let (x, y) = (to_i64(&a[0]), to_i64(&a[1]));
            if y == 0 {
                return Err(Fail::msg("runtime error: integer divide by zero"));
            }
            Ok(Val::int64(x.wrapping_div(y)))
        }),
        def("mod", &[Any, Any], None, |_, a| {
            let (x, y) = (to_i64(&a[0]), to_i64(&a[1]));
            if y == 0 {
                return Err(Fail::msg("runtime error: integer divide by zero"));
            }
            Ok(Val::int64(x.wrapping_rem(y)))
        }),
        def("max", &[Any], Some(Any), |_, a| Ok(Val::int64(a.iter().map(to_i64).max().unwrap_or(0)))),
        def("biggest", &[Any], Some(Any), |_, a| Ok(Val::int64(a.iter().map(to_i64).max().unwrap_or(0)))),
        def("min", &[Any], Some(Any), |_, a| Ok(Val::int64(a.iter().map(to_i64).min().unwrap_or(0)))),
        def("maxf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(a.iter().map(to_f64).fold(f64::NEG_INFINITY, f64::max)))
        }),
        def("minf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(a.iter().map(to_f64).fold(f64::INFINITY, f64::min)))
        }),
        def("add1f", &[Any], None, |_, a| Ok(Val::Float(decimal(to_f64(&a[0]) + 1.0)))),
        def("addf", &[], Some(Any), |_, a| {
            Ok(Val::Float(decimal(a.iter().map(to_f64).sum())))
        }),
        def("subf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(decimal(a[1..].iter().fold(to_f64(&a[0]), |acc, v| acc - to_f64(v)))))
        }),
        def("mulf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(decimal(a[1..].iter().fold(to_f64(&a[0]), |acc, v| acc * to_f64(v)))))
        }),
        def("divf", &[Any], Some(Any), |_, a| {
            let mut acc = to_f64(&a[0]);
            for v in &a[1..] {
                let d = to_f64(v);
                if d == 0.0 {
                    return Err(Fail::msg("decimal division by 0"));
                }
                acc /= d;
            }
            Ok(Val::Float(decimal(acc)))
        }),
        def("ceil", &[Any], None, |_, a| Ok(Val::Float(to_f64(&a[0]).ceil()))),
        def("floor", &[Any], None, |_, a| Ok(Val::Float(to_f64(&a[0]).floor()))),
        def("round", &[Any, Int], Some(Float), |_, a| {
            let on = match a.get(2) {
                Some(Val::Float(f)) => *f,
                _ => 0.5,
            };
            let pow = 10f64.powf(int(&a[1]) as f64);
            let digit = pow * to_f64(&a[0]);
            let frac = digit.fract();
            let r = if frac >= on { digit.ceil() } else { digit.floor() };
            Ok(Val::Float(r / pow))
        }),
        def("int", &[Any], None, |_, a| Ok(Val::int(to_i64(&a[0])))),
        def("int64", &[Any], None, |_, a| Ok(Val::int64(to_i64(&a[0])))),
        def("float64", &[Any], None, |_, a| Ok(Val::Float(to_f64(&a[0])))),
        def("atoi", &[Str], None, |_, a| {
            // strconv.Atoi: decimal only, 0 on failure.
            let t = text(&a[0]);
            let ok = !t.is_empty()
                && t.trim_start_matches(['+', '-']).bytes().all(|b| b.is_ascii_digit());
            Ok(Val::int(if ok { t.parse().unwrap_or(0) } else { 0 }))
        }),
        def("toDecimal", &[Any], None, toDecimal),
        def("randInt", &[Int, Int], None, |_, a| {
            use rand::Rng as _;
            let (lo, hi) = (int(&a[0]), int(&a[1]));
            if hi <= lo {
                return Err(Fail::msg("invalid argument to Intn"));
            }
            Ok(Val::int(rand::rng().random_range(lo..hi)))
        }),
    ]
}

/// An octal text read as a number (`"0777"` is 511), 0 when it is not one.
#[allow(non_snake_case)]
fn toDecimal(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let t = super::strval(e, &a[0])?;
    let ok = !t.is_empty() && t.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let _ = parse_go_int;
    Ok(Val::int64(if ok { i64::from_str_radix(&t, 8).unwrap_or(0) } else { 0 }))
}

/// A float as Sprig's decimal arithmetic would give it back.
fn decimal(f: f64) -> f64 {
    if !f.is_finite() || f == 0.0 {
        return f;
    }
    format!("{f:.14e}").parse().unwrap_or(f)
}
