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
        def("add1", &[Any], None, |_, a| {
            Ok(Val::int64(to_i64(&a[0]).wrapping_add(1)))
        }),
        def("add", &[], Some(Any), |_, a| {
            Ok(Val::int64(
                a.iter().fold(0i64, |acc, v| acc.wrapping_add(to_i64(v))),
            ))
        }),
        def("sub", &[Any, Any], None, |_, a| {
            Ok(Val::int64(to_i64(&a[0]).wrapping_sub(to_i64(&a[1]))))
        }),
        def("mul", &[Any], Some(Any), |_, a| {
            Ok(Val::int64(
                a[1..]
                    .iter()
                    .fold(to_i64(&a[0]), |acc, v| acc.wrapping_mul(to_i64(v))),
            ))
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
        def("max", &[Any], Some(Any), |_, a| {
            Ok(Val::int64(a.iter().map(to_i64).max().unwrap_or(0)))
        }),
        def("biggest", &[Any], Some(Any), |_, a| {
            Ok(Val::int64(a.iter().map(to_i64).max().unwrap_or(0)))
        }),
        def("min", &[Any], Some(Any), |_, a| {
            Ok(Val::int64(a.iter().map(to_i64).min().unwrap_or(0)))
        }),
        def("maxf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(
                a.iter().map(to_f64).fold(f64::NEG_INFINITY, f64::max),
            ))
        }),
        def("minf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(
                a.iter().map(to_f64).fold(f64::INFINITY, f64::min),
            ))
        }),
        def("add1f", &[Any], None, |_, a| {
            Ok(Val::Float(decimal_fold(&a[0], &[Val::int(1)], Op::Add)))
        }),
        def("addf", &[], Some(Any), |_, a| {
            Ok(Val::Float(decimal_fold(&Val::Float(0.0), &a, Op::Add)))
        }),
        def("subf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(decimal_fold(&a[0], &a[1..], Op::Sub)))
        }),
        def("mulf", &[Any], Some(Any), |_, a| {
            Ok(Val::Float(decimal_fold(&a[0], &a[1..], Op::Mul)))
        }),
        def("divf", &[Any], Some(Any), |_, a| {
            if a[1..].iter().any(|v| to_f64(v) == 0.0) {
                return Err(Fail::msg("decimal division by 0"));
            }
            Ok(Val::Float(decimal_fold(&a[0], &a[1..], Op::Div)))
        }),
        def("ceil", &[Any], None, |_, a| {
            Ok(Val::Float(to_f64(&a[0]).ceil()))
        }),
        def("floor", &[Any], None, |_, a| {
            Ok(Val::Float(to_f64(&a[0]).floor()))
        }),
        def("round", &[Any, Int], Some(Float), |_, a| {
            let on = match a.get(2) {
                Some(Val::Float(f)) => *f,
                _ => 0.5,
            };
            let pow = 10f64.powf(int(&a[1]) as f64);
            let digit = pow * to_f64(&a[0]);
            let frac = digit.fract();
            let r = if frac >= on {
                digit.ceil()
            } else {
                digit.floor()
            };
            Ok(Val::Float(r / pow))
        }),
        def("int", &[Any], None, |_, a| Ok(Val::int(to_i64(&a[0])))),
        def("int64", &[Any], None, |_, a| Ok(Val::int64(to_i64(&a[0])))),
        def("float64", &[Any], None, |_, a| {
            Ok(Val::Float(to_f64(&a[0])))
        }),
        def("atoi", &[Str], None, |_, a| {
            // strconv.Atoi: decimal only, 0 on failure.
            let t = text(&a[0]);
            let ok = !t.is_empty()
                && t.trim_start_matches(['+', '-'])
                    .bytes()
                    .all(|b| b.is_ascii_digit());
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
    Ok(Val::int64(if ok {
        i64::from_str_radix(&t, 8).unwrap_or(0)
    } else {
        0
    }))
}

/// A decimal number `m × 10^e`, as Sprig's `…f` functions compute (shopspring's
/// decimal): each operand is the shortest decimal of its float, sums and products are
/// exact, quotients are rounded to 16 decimal places, and the result is read back as the
/// nearest float. `None` once a value leaves what `i128` holds (the caller then falls
/// back to float arithmetic).
#[derive(Clone, Copy)]
struct Dec {
    m: i128,
    e: i32,
}

impl Dec {
    fn of(f: f64) -> Option<Dec> {
        if !f.is_finite() {
            return None;
        }
        if f == 0.0 {
            return Some(Dec { m: 0, e: 0 });
        }
        let text = format!("{f:e}");
        let (mant, exp) = text.split_once('e')?;
        let digits = mant.replace(['.', '-'], "");
        let frac = mant.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
        let m: i128 = digits.parse().ok()?;
        Some(Dec {
            m: if f < 0.0 { -m } else { m },
            e: exp.parse::<i32>().ok()? - frac,
        })
    }

    fn scaled(self, e: i32) -> Option<i128> {
        let shift = u32::try_from(self.e - e).ok()?;
        self.m.checked_mul(10i128.checked_pow(shift)?)
    }

    fn add(self, o: Dec) -> Option<Dec> {
        let e = self.e.min(o.e);
        Some(Dec {
            m: self.scaled(e)?.checked_add(o.scaled(e)?)?,
            e,
        })
    }

    fn sub(self, o: Dec) -> Option<Dec> {
        self.add(Dec { m: -o.m, e: o.e })
    }

    fn mul(self, o: Dec) -> Option<Dec> {
        Some(Dec {
            m: self.m.checked_mul(o.m)?,
            e: self.e.checked_add(o.e)?,
        })
    }

    /// Rounded half away from zero to 16 decimal places.
    fn div(self, o: Dec) -> Option<Dec> {
        if o.m == 0 {
            return None;
        }
        // self / o = (self.m / o.m) × 10^(self.e - o.e); scale the numerator so the
        // quotient has 16 places plus one for rounding.
        let k = u32::try_from(self.e - o.e + 17).ok()?;
        let num = self.m.checked_mul(10i128.checked_pow(k)?)?;
        let q = num / o.m;
        let rounded = (q + q.signum() * 5) / 10;
        Some(Dec { m: rounded, e: -16 })
    }

    fn to_f64(self) -> f64 {
        format!("{}e{}", self.m, self.e).parse().unwrap_or(f64::NAN)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    fn exact(self, a: Dec, b: Dec) -> Option<Dec> {
        match self {
            Op::Add => a.add(b),
            Op::Sub => a.sub(b),
            Op::Mul => a.mul(b),
            Op::Div => a.div(b),
        }
    }

    fn float(self, a: f64, b: f64) -> f64 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div => a / b,
        }
    }
}

/// `first op rest[0] op rest[1] …` in decimal, or in floats once out of range.
fn decimal_fold(first: &Val, rest: &[Val], op: Op) -> f64 {
    let exact = Dec::of(to_f64(first)).and_then(|start| {
        rest.iter()
            .try_fold(start, |acc, v| op.exact(acc, Dec::of(to_f64(v))?))
    });
    exact.map_or_else(
        || {
            rest.iter()
                .fold(to_f64(first), |acc, v| op.float(acc, to_f64(v)))
        },
        Dec::to_f64,
    )
}
