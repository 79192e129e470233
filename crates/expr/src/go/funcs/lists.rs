//! Sprig's lists, dictionaries and reflection functions. Lists are never changed in place
//! (`append` makes a new one); dictionaries are (`set`, `unset`, `merge`), as in Sprig,
//! and a dictionary may never be stored inside itself. Sprig's `slice` replaces Go's
//! builtin of that name, as it does in µTask.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::super::exec::{Exec, Fail, R};
use super::super::value::{MapRef, Val};
use super::P::*;
use super::{FuncDef, alloc, def, empty, int, s, strval, text, to_i64};

/// Bytes one list slot or map entry is counted as.
const SLOT: usize = 16;

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("list", &[], Some(Any), make_list),
        def("tuple", &[], Some(Any), make_list),
        def("dict", &[], Some(Any), |e, a| {
            alloc(e, a.len() * SLOT)?;
            let mut m = BTreeMap::new();
            let mut it = a.into_iter();
            while let Some(k) = it.next() {
                let key = strval(e, &k)?.to_string();
                m.insert(key, it.next().unwrap_or_else(|| s("")));
            }
            Ok(Val::map(m))
        }),
        def("get", &[Map, Str], None, |_, a| {
            Ok(map_of(&a[0])
                .and_then(|m| m.borrow().get(text(&a[1])).cloned())
                .unwrap_or_else(|| s("")))
        }),
        def("set", &[Map, Str, Any], None, |e, mut a| {
            let value = a.pop().unwrap_or(Val::Nil);
            let m = map_of(&a[0]).ok_or_else(|| Fail::msg("assignment to entry in nil map"))?;
            no_cycle(e, &value, &m)?;
            alloc(e, SLOT)?;
            m.borrow_mut().insert(text(&a[1]).to_string(), value);
            Ok(a[0].clone())
        }),
        def("unset", &[Map, Str], None, |_, a| {
            if let Some(m) = map_of(&a[0]) {
                m.borrow_mut().remove(text(&a[1]));
            }
            Ok(a[0].clone())
        }),
        def("hasKey", &[Map, Str], None, |_, a| {
            Ok(Val::Bool(
                map_of(&a[0]).is_some_and(|m| m.borrow().contains_key(text(&a[1]))),
            ))
        }),
        def("pluck", &[Str], Some(Map), |e, a| {
            alloc(e, a.len() * SLOT)?;
            let key = text(&a[0]);
            Ok(Val::list(
                a[1..]
                    .iter()
                    .filter_map(|d| map_of(d).and_then(|m| m.borrow().get(key).cloned()))
                    .collect(),
            ))
        }),
        def("keys", &[], Some(Map), |e, a| {
            let mut out = Vec::new();
            for d in &a {
                if let Some(m) = map_of(d) {
                    alloc(e, m.borrow().len() * SLOT)?;
                    out.extend(m.borrow().keys().map(|k| s(k.as_str())));
                }
            }
            Ok(Val::list(out))
        }),
        def("values", &[Map], None, |e, a| {
            let m = map_of(&a[0]);
            let vals: Vec<Val> = m
                .map(|m| m.borrow().values().cloned().collect())
                .unwrap_or_default();
            alloc(e, vals.len() * SLOT)?;
            Ok(Val::list(vals))
        }),
        def("pick", &[Map], Some(Str), |e, a| {
            alloc(e, a.len() * SLOT)?;
            let mut out = BTreeMap::new();
            if let Some(m) = map_of(&a[0]) {
                let m = m.borrow();
                for k in &a[1..] {
                    if let Some(v) = m.get(text(k)) {
                        out.insert(text(k).to_string(), v.clone());
                    }
                }
            }
            Ok(Val::map(out))
        }),
        def("omit", &[Map], Some(Str), |e, a| {
            let mut out = BTreeMap::new();
            if let Some(m) = map_of(&a[0]) {
                let m = m.borrow();
                alloc(e, m.len() * SLOT)?;
                for (k, v) in m.iter() {
                    if !a[1..].iter().any(|o| text(o) == k) {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(Val::map(out))
        }),
        def("merge", &[Map], Some(Map), |e, a| merge(e, a, false)),
        def("mustMerge", &[Map], Some(Map), |e, a| merge(e, a, false)),
        def("mergeOverwrite", &[Map], Some(Map), |e, a| {
            merge(e, a, true)
        }),
        def("mustMergeOverwrite", &[Map], Some(Map), |e, a| {
            merge(e, a, true)
        }),
        def("dig", &[Any, Any], Some(Any), dig),
        def("append", &[Any, Any], None, push),
        def("push", &[Any, Any], None, push),
        def("mustAppend", &[Any, Any], None, push),
        def("mustPush", &[Any, Any], None, push),
        def("prepend", &[Any, Any], None, prepend),
        def("mustPrepend", &[Any, Any], None, prepend),
        def("first", &[Any], None, |_, a| {
            Ok(list_arg(&a[0], "first")?
                .first()
                .cloned()
                .unwrap_or(Val::Nil))
        }),
        def("mustFirst", &[Any], None, |_, a| {
            Ok(list_arg(&a[0], "first")?
                .first()
                .cloned()
                .unwrap_or(Val::Nil))
        }),
        def("last", &[Any], None, |_, a| {
            Ok(list_arg(&a[0], "last")?.last().cloned().unwrap_or(Val::Nil))
        }),
        def("mustLast", &[Any], None, |_, a| {
            Ok(list_arg(&a[0], "last")?.last().cloned().unwrap_or(Val::Nil))
        }),
        def("rest", &[Any], None, |e, a| part(e, &a[0], "rest", 1, 0)),
        def("mustRest", &[Any], None, |e, a| {
            part(e, &a[0], "rest", 1, 0)
        }),
        def("initial", &[Any], None, |e, a| {
            part(e, &a[0], "initial", 0, 1)
        }),
        def("mustInitial", &[Any], None, |e, a| {
            part(e, &a[0], "initial", 0, 1)
        }),
        def("reverse", &[Any], None, reverse),
        def("mustReverse", &[Any], None, reverse),
        def("uniq", &[Any], None, uniq),
        def("mustUniq", &[Any], None, uniq),
        def("without", &[Any], Some(Any), without),
        def("mustWithout", &[Any], Some(Any), without),
        def("has", &[Any, Any], None, has),
        def("mustHas", &[Any, Any], None, has),
        def("compact", &[Any], None, compact),
        def("mustCompact", &[Any], None, compact),
        def("slice", &[Any], Some(Any), slice),
        def("mustSlice", &[Any], Some(Any), slice),
        def("concat", &[], Some(Any), |e, a| {
            let mut out = Vec::new();
            for l in &a {
                let l = list_arg(l, "concat")?;
                alloc(e, l.len() * SLOT)?;
                out.extend(l.iter().cloned());
            }
            Ok(Val::list(out))
        }),
        def("chunk", &[Int, Any], None, chunk),
        def("mustChunk", &[Int, Any], None, chunk),
        def("until", &[Int], None, |e, a| {
            let n = int(&a[0]);
            until_step(e, 0, n, if n < 0 { -1 } else { 1 })
        }),
        def("untilStep", &[Int, Int, Int], None, |e, a| {
            until_step(e, int(&a[0]), int(&a[1]), int(&a[2]))
        }),
        def("seq", &[], Some(Int), seq),
        def("deepEqual", &[Any, Any], None, |_, a| {
            Ok(Val::Bool(a[0].deep_equal(&a[1])))
        }),
        def("deepCopy", &[Any], None, deep_copy_fn),
        def("mustDeepCopy", &[Any], None, deep_copy_fn),
        def("typeOf", &[Any], None, |_, a| Ok(s(a[0].type_name()))),
        def("typeIs", &[Str, Any], None, |_, a| {
            Ok(Val::Bool(text(&a[0]) == a[1].type_name()))
        }),
        def("typeIsLike", &[Str, Any], None, |_, a| {
            let t = text(&a[0]);
            let name = a[1].type_name();
            Ok(Val::Bool(t == name || t == format!("*{name}")))
        }),
        def("kindOf", &[Any], None, |_, a| Ok(s(a[0].kind_name()))),
        def("kindIs", &[Str, Any], None, |_, a| {
            Ok(Val::Bool(text(&a[0]) == a[1].kind_name()))
        }),
        def("empty", &[Any], None, |_, a| Ok(Val::Bool(empty(&a[0])))),
        def("default", &[Any], Some(Any), |_, a| {
            // `default d` alone (no value given) is `d`.
            Ok(match a.get(1) {
                Some(v) if !empty(v) => v.clone(),
                _ => a[0].clone(),
            })
        }),
        def("coalesce", &[], Some(Any), |_, a| {
            Ok(a.into_iter().find(|v| !empty(v)).unwrap_or(Val::Nil))
        }),
        def("all", &[], Some(Any), |_, a| {
            Ok(Val::Bool(a.iter().all(|v| !empty(v))))
        }),
        def("any", &[], Some(Any), |_, a| {
            Ok(Val::Bool(a.iter().any(|v| !empty(v))))
        }),
        def("ternary", &[Any, Any, Bool], None, |_, a| {
            Ok(if matches!(a[2], Val::Bool(true)) {
                a[0].clone()
            } else {
                a[1].clone()
            })
        }),
    ]
}

fn map_of(v: &Val) -> Option<MapRef> {
    match v {
        Val::Map(m) => Some(m.clone()),
        _ => None,
    }
}

/// Refuses to store `value` in `map` when `map` can be reached from `value`.
fn no_cycle(e: &mut Exec<'_>, value: &Val, map: &MapRef) -> R<()> {
    let mut steps = 0;
    let cycle = value.reaches(map, &mut steps);
    e.budget.steps(steps)?;
    if cycle {
        return Err(Fail::msg("a dictionary cannot contain itself"));
    }
    Ok(())
}

fn make_list(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    alloc(e, a.len() * SLOT)?;
    Ok(Val::list(a))
}

/// A list argument; Sprig fails (or panics) on anything else.
fn list_arg(v: &Val, what: &str) -> R<Rc<Vec<Val>>> {
    match v {
        Val::List(l) => Ok(l.clone()),
        Val::Missing | Val::Nil => Err(Fail::msg(format!("Cannot find {what} on nil"))),
        other => Err(Fail::msg(format!(
            "Cannot find {what} on type {}",
            other.kind_name()
        ))),
    }
}

fn push(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "append")?;
    alloc(e, (l.len() + 1) * SLOT)?;
    let mut out = l.as_ref().clone();
    out.push(a[1].clone());
    Ok(Val::list(out))
}

fn prepend(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "prepend")?;
    alloc(e, (l.len() + 1) * SLOT)?;
    let mut out = Vec::with_capacity(l.len() + 1);
    out.push(a[1].clone());
    out.extend(l.iter().cloned());
    Ok(Val::list(out))
}

/// `rest` (drop `front`) and `initial` (drop `back`); empty for an empty list.
fn part(e: &mut Exec<'_>, v: &Val, what: &str, front: usize, back: usize) -> R<Val> {
    let l = list_arg(v, what)?;
    if l.is_empty() {
        return Ok(Val::list(Vec::new()));
    }
    alloc(e, l.len() * SLOT)?;
    Ok(Val::list(l[front..l.len() - back].to_vec()))
}

fn reverse(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "reverse")?;
    alloc(e, l.len() * SLOT)?;
    Ok(Val::list(l.iter().rev().cloned().collect()))
}

fn uniq(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "uniq")?;
    alloc(e, l.len() * SLOT)?;
    let mut out: Vec<Val> = Vec::new();
    for item in l.iter() {
        e.budget.steps(out.len() as u64 + 1)?;
        if !out.iter().any(|o| o.deep_equal(item)) {
            out.push(item.clone());
        }
    }
    Ok(Val::list(out))
}

fn without(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "without")?;
    alloc(e, l.len() * SLOT)?;
    let omit = &a[1..];
    let mut out = Vec::new();
    for item in l.iter() {
        e.budget.steps(omit.len() as u64 + 1)?;
        if !omit.iter().any(|o| o.deep_equal(item)) {
            out.push(item.clone());
        }
    }
    Ok(Val::list(out))
}

fn has(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    if a[1].is_nil() {
        return Ok(Val::Bool(false));
    }
    let l = list_arg(&a[1], "has")?;
    e.budget.steps(l.len() as u64)?;
    Ok(Val::Bool(l.iter().any(|i| i.deep_equal(&a[0]))))
}

fn compact(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "compact")?;
    alloc(e, l.len() * SLOT)?;
    Ok(Val::list(l.iter().filter(|v| !empty(v)).cloned().collect()))
}

/// Sprig's `slice list [start [end]]`, indices read as `toInt` reads them.
fn slice(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let l = list_arg(&a[0], "slice")?;
    if l.is_empty() {
        return Ok(Val::Nil);
    }
    let start = a.get(1).map_or(0, to_i64);
    let end = a.get(2).map_or(l.len() as i64, to_i64);
    if start < 0 || end < start || end as usize > l.len() {
        return Err(Fail::msg(format!(
            "slice bounds out of range [{start}:{end}]"
        )));
    }
    alloc(e, (end - start) as usize * SLOT)?;
    Ok(Val::list(l[start as usize..end as usize].to_vec()))
}

fn chunk(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let size = int(&a[0]);
    let l = list_arg(&a[1], "chunk")?;
    if size <= 0 {
        return Err(Fail::msg("chunk size must be positive"));
    }
    alloc(e, l.len() * SLOT * 2)?;
    Ok(Val::list(
        l.chunks(size as usize)
            .map(|c| Val::list(c.to_vec()))
            .collect(),
    ))
}

fn until_step(e: &mut Exec<'_>, start: i64, stop: i64, step: i64) -> R<Val> {
    let count = if (stop < start && step < 0) || (stop > start && step > 0) {
        (stop.abs_diff(start)).div_ceil(step.unsigned_abs())
    } else {
        0
    };
    let bytes = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .saturating_mul(SLOT);
    alloc(e, bytes)?;
    let mut out = Vec::with_capacity(count as usize);
    let mut i = start;
    for _ in 0..count {
        out.push(Val::int(i));
        i = i.wrapping_add(step);
    }
    Ok(Val::list(out))
}

/// Sprig's `seq`: like the shell's, as text.
fn seq(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let p: Vec<i64> = a.iter().map(int).collect();
    let (start, end, step) = match p.as_slice() {
        [] => return Ok(s("")),
        [end] => {
            let inc = if *end < 1 { -1 } else { 1 };
            (1, end + inc, inc)
        }
        [start, end] => {
            let inc = if end < start { -1 } else { 1 };
            (*start, end + inc, inc)
        }
        [start, step, end] => {
            let inc = if end < start { -1 } else { 1 };
            if end < start && *step > 0 {
                return Ok(s(""));
            }
            (*start, end + inc, *step)
        }
        _ => return Ok(s("")),
    };
    let Val::List(nums) = &until_step(e, start, end, step)? else {
        unreachable!("until_step makes a list")
    };
    alloc(e, nums.len() * 21)?;
    Ok(s(nums
        .iter()
        .map(|n| super::int(n).to_string())
        .collect::<Vec<_>>()
        .join(" ")))
}

/// mergo's `Merge` (keys `dst` lacks, or holds an empty value for, come from `src`) and
/// `MergeWithOverwrite` (non-empty `src` values win); maps on both sides merge deeply.
fn merge(e: &mut Exec<'_>, a: Vec<Val>, overwrite: bool) -> R<Val> {
    let Some(dst) = map_of(&a[0]) else {
        return Ok(a[0].clone());
    };
    for src in &a[1..] {
        if let Some(src) = map_of(src) {
            merge_into(e, &dst, &src, overwrite, 0)?;
        }
    }
    Ok(a[0].clone())
}

fn merge_into(
    e: &mut Exec<'_>,
    dst: &MapRef,
    src: &MapRef,
    overwrite: bool,
    depth: usize,
) -> R<()> {
    if depth > 64 || Rc::ptr_eq(dst, src) {
        return Ok(());
    }
    let entries: Vec<(String, Val)> = src
        .borrow()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in entries {
        e.budget.step()?;
        let current = dst.borrow().get(&k).cloned();
        match (&current, &v) {
            (Some(Val::Map(d)), Val::Map(s)) => merge_into(e, d, s, overwrite, depth + 1)?,
            (Some(cur), _) if !(empty(cur) || (overwrite && !empty(&v))) => {}
            _ => {
                no_cycle(e, &v, dst)?;
                alloc(e, SLOT)?;
                dst.borrow_mut().insert(k, v);
            }
        }
    }
    Ok(())
}

/// Sprig's `dig "a" "b" default dict`.
fn dig(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let n = a.len();
    let (keys, default, dict) = (&a[..n - 2], &a[n - 2], &a[n - 1]);
    let mut cur = dict.clone();
    for k in keys {
        e.budget.step()?;
        let Val::Str(k) = k else {
            return Err(Fail::msg(format!(
                "dig: key is a {}, not a string",
                k.type_name()
            )));
        };
        let next = match &cur {
            Val::Map(m) => m.borrow().get(&**k).cloned(),
            _ => return Err(Fail::msg("dig: the last argument must be a dictionary")),
        };
        match next {
            Some(v) => cur = v,
            None => return Ok(default.clone()),
        }
    }
    Ok(cur)
}

fn deep_copy(e: &mut Exec<'_>, v: &Val, depth: usize) -> R<Val> {
    e.budget.step()?;
    if depth > 200 {
        return Err(Fail::msg("deepCopy: value nested too deep"));
    }
    Ok(match v {
        Val::List(l) => {
            alloc(e, l.len() * SLOT)?;
            Val::list(
                l.iter()
                    .map(|i| deep_copy(e, i, depth + 1))
                    .collect::<R<_>>()?,
            )
        }
        Val::Map(m) => {
            let entries: Vec<(String, Val)> = m
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            alloc(e, entries.len() * SLOT)?;
            let mut out = BTreeMap::new();
            for (k, v) in entries {
                out.insert(k, deep_copy(e, &v, depth + 1)?);
            }
            Val::map(out)
        }
        other => other.clone(),
    })
}

fn deep_copy_fn(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    if a[0].is_nil() {
        return Err(Fail::msg("deepCopy: cannot copy nil"));
    }
    deep_copy(e, &a[0], 0)
}
