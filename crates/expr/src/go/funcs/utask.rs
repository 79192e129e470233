//! µTask's own functions: `field` and `fieldFrom` (the dot notation for keys dots cannot
//! spell), `eval` and `evalCache` (template variables), its `fromJson` and
//! `mustFromJson` (numbers come back as `float64`, as Go's `json.Unmarshal` gives them),
//! `uuid`, and unpadded base64.

use base64::Engine as _;

use super::super::exec::{Exec, Fail, R};
use super::super::value::{Val, to_json};
use super::P::*;
use super::{FuncDef, alloc, def, s, text};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("field", &[], Some(Str), |e, a| {
            let root = e.root.clone();
            field(e, root, &a)
        }),
        def("fieldFrom", &[], Some(Any), |e, a| {
            if a.len() < 2 {
                return Err(Fail::msg("invalid number of parameters given"));
            }
            let (keys, data) = a.split_at(a.len() - 1);
            if !matches!(data[0], Val::Map(_)) {
                return Err(Fail::msg("unable to cast given data to a map[string]"));
            }
            if keys.iter().any(|k| !matches!(k, Val::Str(_))) {
                return Err(Fail::msg("keys must be strings"));
            }
            field(e, data[0].clone(), keys)
        }),
        def("eval", &[Str], None, |e, a| eval(e, text(&a[0]), false)),
        def("evalCache", &[Str], None, |e, a| eval(e, text(&a[0]), true)),
        def("fromJson", &[Str], None, |e, a| {
            Ok(from_json(e, text(&a[0]))?.unwrap_or(Val::Missing))
        }),
        def("mustFromJson", &[Str], None, |e, a| {
            from_json(e, text(&a[0]))?.map_err(Fail::msg)
        }),
        def("uuid", &[], None, |_, _| {
            Ok(s(uuid::Uuid::new_v4().to_string()))
        }),
        def("b64RawEnc", &[Str], None, |e, a| {
            let t = text(&a[0]);
            alloc(e, t.len() / 3 * 4 + 4)?;
            Ok(s(base64::engine::general_purpose::STANDARD_NO_PAD.encode(t)))
        }),
        def("b64RawDec", &[Str], None, |e, a| {
            let t = text(&a[0]);
            alloc(e, t.len())?;
            Ok(s(
                match base64::engine::general_purpose::STANDARD_NO_PAD.decode(t) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(err) => format!("illegal base64 data: {err}"),
                },
            ))
        }),
    ]
}

/// Walks maps by key from `from`; no value once a key is missing or a value is not a map.
fn field(e: &mut Exec<'_>, from: Val, keys: &[Val]) -> R<Val> {
    let mut cur = from;
    for k in keys {
        e.budget.step()?;
        let next = match &cur {
            Val::Map(m) => m.borrow().get(text(k)).cloned(),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return Ok(Val::Missing),
        }
    }
    Ok(cur.unwrapped())
}

/// The decoded value, or the decoding error (the budget running out is not one).
fn from_json(e: &mut Exec<'_>, t: &str) -> R<Result<Val, String>> {
    // Decoding builds about as much as it reads, plus a slot per item.
    alloc(e, t.len().saturating_mul(4))?;
    Ok(serde_json::from_str::<serde_json::Value>(t)
        .map(|v| Val::from_json_floats(&v))
        .map_err(|err| err.to_string()))
}

/// `eval "name"`: a variable's value (a string value rendered as a template first), or
/// its JavaScript expression rendered and handed to the caller's evaluator.
fn eval(e: &mut Exec<'_>, name: &str, cache: bool) -> R<Val> {
    let Some(vars) = e.variables else {
        return Err(Fail::msg(format!(
            "Var name not found in template: '{name}'"
        )));
    };
    let Some(var) = vars.get(name) else {
        return Err(Fail::msg(format!(
            "Var name not found in template: '{name}'"
        )));
    };
    if cache && let Some(v) = vars.cached(name) {
        return Ok(Val::from_json(&v));
    }
    let result = match (&var.value, &var.expression) {
        (Some(value), _) if !value.is_null() => match value {
            serde_json::Value::String(t) => s(super::super::render_nested(e, t)?),
            other => Val::from_json(other),
        },
        (_, Some(expression)) => {
            let rendered = super::super::render_nested(e, expression)?;
            s(vars.evaluate_expression(name, &rendered)?)
        }
        _ => s(""),
    };
    if cache {
        vars.remember(name, to_json(&result));
    }
    Ok(result)
}
