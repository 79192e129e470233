//! Sprig's dates and Go's reference layouts (`2006-01-02T15:04:05Z07:00`), durations as
//! Go prints them (`1h2m3s`), and the methods templates call on a time (`.Unix`,
//! `.Format`). Go's "Local" zone is UTC here: rendering reads no machine settings.

use super::super::exec::{Exec, Fail, R};
use super::super::value::{IntType, Val, go_time_string, zone_abbreviation};
use super::P::*;
use super::{FuncDef, alloc, def, s, text};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("now", &[], None, |_, _| Ok(Val::Time(now()))),
        def("date", &[Str, Any], None, |e, a| {
            format_date(e, &a[1], text(&a[0]), "UTC")
        }),
        def("dateInZone", &[Str, Any, Str], None, |e, a| {
            format_date(e, &a[1], text(&a[0]), text(&a[2]))
        }),
        def("date_in_zone", &[Str, Any, Str], None, |e, a| {
            format_date(e, &a[1], text(&a[0]), text(&a[2]))
        }),
        def("htmlDate", &[Any], None, |e, a| {
            format_date(e, &a[0], "2006-01-02", "UTC")
        }),
        def("htmlDateInZone", &[Any, Str], None, |e, a| {
            format_date(e, &a[0], "2006-01-02", text(&a[1]))
        }),
        def("dateModify", &[Str, Time], None, |_, a| {
            date_modify(&a, false)
        }),
        def("date_modify", &[Str, Time], None, |_, a| {
            date_modify(&a, false)
        }),
        def("mustDateModify", &[Str, Time], None, |_, a| {
            date_modify(&a, true)
        }),
        def("must_date_modify", &[Str, Time], None, |_, a| {
            date_modify(&a, true)
        }),
        def("toDate", &[Str, Str], None, |_, a| {
            Ok(Val::Time(
                parse_layout(text(&a[0]), text(&a[1])).unwrap_or_else(|_| zero_time()),
            ))
        }),
        def("mustToDate", &[Str, Str], None, |_, a| {
            parse_layout(text(&a[0]), text(&a[1]))
                .map(Val::Time)
                .map_err(Fail::msg)
        }),
        def("unixEpoch", &[Time], None, |_, a| match &a[0] {
            Val::Time(t) => Ok(s(t.timestamp().as_second().to_string())),
            _ => unreachable!("checked as a time"),
        }),
        def("ago", &[Any], None, |_, a| {
            let t = as_time(&a[0]).unwrap_or_else(now);
            let secs = now().timestamp().as_second() - t.timestamp().as_second();
            Ok(s(taskhook_model::duration::go_duration(
                i128::from(secs) * 1_000_000_000,
            )))
        }),
        // Sprig reads a string or an int64 of seconds; any other value (an int constant
        // among them) is zero.
        def("duration", &[Any], None, |_, a| {
            let secs = match &a[0] {
                Val::Str(t) => t.parse::<i64>().unwrap_or(0),
                Val::Int(i, IntType::Int64) => *i,
                _ => 0,
            };
            Ok(s(taskhook_model::duration::go_duration(
                i128::from(secs) * 1_000_000_000,
            )))
        }),
        // A duration text, an int64 of nanoseconds, or the time since a time.
        def("durationRound", &[Any], None, |_, a| {
            let nanos = match &a[0] {
                Val::Str(t) => parse_duration(t).unwrap_or(0),
                Val::Int(i, IntType::Int64) => i128::from(*i),
                Val::Time(t) => now().timestamp().as_nanosecond() - t.timestamp().as_nanosecond(),
                _ => 0,
            };
            Ok(s(duration_round(nanos)))
        }),
    ]
}

fn now() -> jiff::Zoned {
    jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC)
}

fn zero_time() -> jiff::Zoned {
    jiff::civil::date(1, 1, 1)
        .at(0, 0, 0, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap_or_else(|_| now())
}

/// What Sprig's `date` accepts as a time: a time, or Unix seconds as a Go integer.
fn as_time(v: &Val) -> Option<jiff::Zoned> {
    match v {
        Val::Time(t) => Some(t.clone()),
        Val::Int(i, _) => jiff::Timestamp::from_second(*i)
            .ok()
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC)),
        _ => None,
    }
}

/// Sprig's `formatDate`: anything that is not a time or an integer means now; an unknown
/// zone means UTC.
fn format_date(e: &mut Exec<'_>, v: &Val, layout: &str, zone: &str) -> R<Val> {
    let t = as_time(v).unwrap_or_else(now);
    let tz = match zone {
        "" | "UTC" | "Local" => jiff::tz::TimeZone::UTC,
        name => jiff::tz::TimeZone::get(name).unwrap_or(jiff::tz::TimeZone::UTC),
    };
    alloc(e, layout.len() * 4)?;
    Ok(s(format_layout(&t.with_time_zone(tz), layout)))
}

fn date_modify(a: &[Val], must: bool) -> R<Val> {
    let Val::Time(t) = &a[1] else {
        unreachable!("checked as a time")
    };
    match parse_duration(text(&a[0])) {
        Ok(ns) => {
            let span = jiff::SignedDuration::from_nanos(i64::try_from(ns).unwrap_or(i64::MAX));
            t.checked_add(span)
                .map(Val::Time)
                .map_err(|err| Fail::msg(err.to_string()))
        }
        Err(err) if must => Err(Fail::msg(err)),
        Err(_) => Ok(a[1].clone()),
    }
}

/// Methods of Go's `time.Time` that templates use.
pub(crate) fn time_method(e: &mut Exec<'_>, t: &jiff::Zoned, name: &str, args: Vec<Val>) -> R<Val> {
    let no_args = |v: Val| -> R<Val> {
        if args.is_empty() {
            Ok(v)
        } else {
            Err(Fail::msg(format!(
                "wrong number of args for {name}: want 0 got {}",
                args.len()
            )))
        }
    };
    match name {
        "Unix" => no_args(Val::int64(t.timestamp().as_second())),
        "UnixMilli" => no_args(Val::int64(t.timestamp().as_millisecond())),
        "UnixNano" => no_args(Val::int64(
            i64::try_from(t.timestamp().as_nanosecond()).unwrap_or(i64::MAX),
        )),
        "Year" => no_args(Val::int(i64::from(t.year()))),
        "Month" => no_args(s(MONTHS[t.month() as usize - 1])),
        "Day" => no_args(Val::int(i64::from(t.day()))),
        "Hour" => no_args(Val::int(i64::from(t.hour()))),
        "Minute" => no_args(Val::int(i64::from(t.minute()))),
        "Second" => no_args(Val::int(i64::from(t.second()))),
        "Nanosecond" => no_args(Val::int(i64::from(t.subsec_nanosecond()))),
        "YearDay" => no_args(Val::int(i64::from(t.day_of_year()))),
        "Weekday" => no_args(s(DAYS[t.weekday().to_sunday_zero_offset() as usize])),
        "UTC" | "Local" => no_args(Val::Time(t.with_time_zone(jiff::tz::TimeZone::UTC))),
        "String" => no_args(s(go_time_string(t))),
        "IsZero" => no_args(Val::Bool(*t == zero_time())),
        "Format" => match args.as_slice() {
            [Val::Str(layout)] => {
                alloc(e, layout.len() * 4)?;
                Ok(s(format_layout(t, layout)))
            }
            _ => Err(Fail::msg("Format takes one string")),
        },
        other => Err(Fail::msg(format!(
            "can't evaluate field {other} in type time.Time"
        ))),
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// One element of a Go layout.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    YearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    PM,
    Pm,
    TzName,
    /// `-0700` style offsets: (colons, seconds, Z for UTC).
    Offset(bool, bool, bool, bool),
    /// Fractional seconds: digits, trim trailing zeros.
    Frac(usize, bool, char),
}

/// Splits a layout into literal text and chunks, as Go's `nextStdChunk` reads it.
fn chunks(layout: &str) -> Vec<Result<Chunk, String>> {
    let mut out: Vec<Result<Chunk, String>> = Vec::new();
    let b = layout.as_bytes();
    let mut lit = String::new();
    let mut i = 0;
    let starts = |i: usize, p: &str| layout[i..].starts_with(p);
    while i < b.len() {
        let (chunk, len) = match b[i] {
            b'J' if starts(i, "January") => (Some(Chunk::LongMonth), 7),
            b'J' if starts(i, "Jan") => (Some(Chunk::Month), 3),
            b'M' if starts(i, "Monday") => (Some(Chunk::LongWeekDay), 6),
            b'M' if starts(i, "Mon") => (Some(Chunk::WeekDay), 3),
            b'M' if starts(i, "MST") => (Some(Chunk::TzName), 3),
            b'0' if starts(i, "002") => (Some(Chunk::ZeroYearDay), 3),
            b'0' if (b'1'..=b'6').contains(b.get(i + 1).unwrap_or(&0)) => {
                let c = match b[i + 1] {
                    b'1' => Chunk::ZeroMonth,
                    b'2' => Chunk::ZeroDay,
                    b'3' => Chunk::ZeroHour12,
                    b'4' => Chunk::ZeroMinute,
                    b'5' => Chunk::ZeroSecond,
                    _ => Chunk::Year,
                };
                (Some(c), 2)
            }
            b'1' if starts(i, "15") => (Some(Chunk::Hour), 2),
            b'1' => (Some(Chunk::NumMonth), 1),
            b'2' if starts(i, "2006") => (Some(Chunk::LongYear), 4),
            b'2' => (Some(Chunk::Day), 1),
            b'_' if starts(i, "_2006") => {
                lit.push('_');
                (Some(Chunk::LongYear), 5)
            }
            b'_' if starts(i, "__2") => (Some(Chunk::YearDay), 3),
            b'_' if starts(i, "_2") => (Some(Chunk::UnderDay), 2),
            b'3' => (Some(Chunk::Hour12), 1),
            b'4' => (Some(Chunk::Minute), 1),
            b'5' => (Some(Chunk::Second), 1),
            b'P' if starts(i, "PM") => (Some(Chunk::PM), 2),
            b'p' if starts(i, "pm") => (Some(Chunk::Pm), 2),
            b'-' | b'Z' => {
                let z = b[i] == b'Z';
                let rest = &layout[i + 1..];
                let forms = [
                    ("070000", false, true),
                    ("07:00:00", true, true),
                    ("0700", false, false),
                    ("07:00", true, false),
                    ("07", false, false),
                ];
                match forms.iter().find(|(f, ..)| rest.starts_with(f)) {
                    Some((f, colon, secs)) => (
                        Some(Chunk::Offset(*colon, *secs, z, f.len() == 2)),
                        f.len() + 1,
                    ),
                    None => (None, 1),
                }
            }
            b'.' | b',' => {
                let sep = b[i] as char;
                let digit = b.get(i + 1).copied();
                if matches!(digit, Some(b'0' | b'9')) {
                    let d = digit.unwrap_or(b'0');
                    let mut j = i + 1;
                    while b.get(j) == Some(&d) {
                        j += 1;
                    }
                    if !b.get(j).is_some_and(u8::is_ascii_digit) {
                        (Some(Chunk::Frac(j - i - 1, d == b'9', sep)), j - i)
                    } else {
                        (None, 1)
                    }
                } else {
                    (None, 1)
                }
            }
            _ => (None, 0),
        };
        match chunk {
            Some(c) => {
                if !lit.is_empty() {
                    out.push(Err(std::mem::take(&mut lit)));
                }
                out.push(Ok(c));
                i += len;
            }
            None => {
                let ch = layout[i..].chars().next().unwrap_or(' ');
                let n = if len == 0 { ch.len_utf8() } else { len };
                lit.push_str(&layout[i..i + n]);
                i += n;
            }
        }
    }
    if !lit.is_empty() {
        out.push(Err(lit));
    }
    out
}

/// Go's `Time.Format`.
pub(crate) fn format_layout(t: &jiff::Zoned, layout: &str) -> String {
    let mut out = String::new();
    let hour12 = |h: i8| if h % 12 == 0 { 12 } else { h % 12 };
    for c in chunks(layout) {
        match c {
            Err(lit) => out.push_str(&lit),
            Ok(c) => out.push_str(&match c {
                Chunk::LongMonth => MONTHS[t.month() as usize - 1].to_string(),
                Chunk::Month => MONTHS[t.month() as usize - 1][..3].to_string(),
                Chunk::NumMonth => t.month().to_string(),
                Chunk::ZeroMonth => format!("{:02}", t.month()),
                Chunk::LongWeekDay => {
                    DAYS[t.weekday().to_sunday_zero_offset() as usize].to_string()
                }
                Chunk::WeekDay => {
                    DAYS[t.weekday().to_sunday_zero_offset() as usize][..3].to_string()
                }
                Chunk::Day => t.day().to_string(),
                Chunk::UnderDay => format!("{:>2}", t.day()),
                Chunk::ZeroDay => format!("{:02}", t.day()),
                Chunk::YearDay => format!("{:>3}", t.day_of_year()),
                Chunk::ZeroYearDay => format!("{:03}", t.day_of_year()),
                Chunk::Hour => format!("{:02}", t.hour()),
                Chunk::Hour12 => hour12(t.hour()).to_string(),
                Chunk::ZeroHour12 => format!("{:02}", hour12(t.hour())),
                Chunk::Minute => t.minute().to_string(),
                Chunk::ZeroMinute => format!("{:02}", t.minute()),
                Chunk::Second => t.second().to_string(),
                Chunk::ZeroSecond => format!("{:02}", t.second()),
                Chunk::LongYear => format!("{:04}", t.year()),
                Chunk::Year => format!("{:02}", t.year().rem_euclid(100)),
                Chunk::PM => if t.hour() >= 12 { "PM" } else { "AM" }.to_string(),
                Chunk::Pm => if t.hour() >= 12 { "pm" } else { "am" }.to_string(),
                Chunk::TzName => zone_abbreviation(t),
                Chunk::Offset(colon, secs, z, short) => {
                    let off = t.offset().seconds();
                    if z && off == 0 {
                        "Z".to_string()
                    } else {
                        let sign = if off < 0 { '-' } else { '+' };
                        let a = off.unsigned_abs();
                        let (h, m, sec) = (a / 3600, a / 60 % 60, a % 60);
                        let sep = if colon { ":" } else { "" };
                        let mut o = format!("{sign}{h:02}");
                        if !short {
                            o.push_str(&format!("{sep}{m:02}"));
                        }
                        if secs {
                            o.push_str(&format!("{sep}{sec:02}"));
                        }
                        o
                    }
                }
                Chunk::Frac(n, trim, sep) => {
                    let digits = format!("{:09}", t.subsec_nanosecond());
                    let mut d = digits[..n.min(9)].to_string();
                    if trim {
                        d = d.trim_end_matches('0').to_string();
                    }
                    if d.is_empty() {
                        String::new()
                    } else {
                        format!("{sep}{d}")
                    }
                }
            }),
        }
    }
    out
}

/// Go's `time.Parse` for the layouts templates use (numbers, month and day names,
/// offsets, fractions); the zone is UTC unless the text gives an offset.
pub(crate) fn parse_layout(layout: &str, value: &str) -> Result<jiff::Zoned, String> {
    let bad = || format!("parsing time {value:?} as {layout:?}: cannot parse");
    let mut rest = value;
    let (mut year, mut month, mut day, mut hour, mut min, mut sec, mut nanos) =
        (1i16, 1i8, 1i8, 0i8, 0i8, 0i8, 0i32);
    let mut pm: Option<bool> = None;
    let mut frac_taken = false;
    let mut offset: Option<i32> = None;
    let take_num = |rest: &mut &str, min_len: usize, max_len: usize| -> Result<i64, String> {
        let t = rest.trim_start_matches(' ');
        let n = t
            .bytes()
            .take(max_len)
            .take_while(u8::is_ascii_digit)
            .count();
        if n < min_len {
            return Err(bad());
        }
        let v = t[..n].parse().map_err(|_| bad())?;
        *rest = &t[n..];
        Ok(v)
    };
    let take_name = |rest: &mut &str, names: &[&str], short: bool| -> Result<usize, String> {
        for (i, name) in names.iter().enumerate() {
            let n = if short { &name[..3] } else { name };
            if rest.len() >= n.len() && rest[..n.len()].eq_ignore_ascii_case(n) {
                *rest = &rest[n.len()..];
                return Ok(i);
            }
        }
        Err(bad())
    };
    for c in chunks(layout) {
        match c {
            Err(lit) => {
                rest = rest.strip_prefix(lit.as_str()).ok_or_else(bad)?;
            }
            Ok(c) => match c {
                Chunk::LongMonth => month = take_name(&mut rest, &MONTHS, false)? as i8 + 1,
                Chunk::Month => month = take_name(&mut rest, &MONTHS, true)? as i8 + 1,
                Chunk::LongWeekDay => {
                    take_name(&mut rest, &DAYS, false)?;
                }
                Chunk::WeekDay => {
                    take_name(&mut rest, &DAYS, true)?;
                }
                Chunk::NumMonth | Chunk::ZeroMonth => month = take_num(&mut rest, 1, 2)? as i8,
                Chunk::Day | Chunk::UnderDay | Chunk::ZeroDay => {
                    day = take_num(&mut rest, 1, 2)? as i8
                }
                Chunk::YearDay | Chunk::ZeroYearDay => {
                    take_num(&mut rest, 1, 3)?;
                }
                Chunk::Hour | Chunk::Hour12 | Chunk::ZeroHour12 => {
                    hour = take_num(&mut rest, 1, 2)? as i8
                }
                Chunk::Minute | Chunk::ZeroMinute => min = take_num(&mut rest, 1, 2)? as i8,
                Chunk::Second | Chunk::ZeroSecond => {
                    sec = take_num(&mut rest, 1, 2)? as i8;
                    // Go accepts a fraction after seconds even when the layout has none.
                    if let Some(f) = rest.strip_prefix('.')
                        && f.starts_with(|c: char| c.is_ascii_digit())
                    {
                        let n = f.bytes().take_while(u8::is_ascii_digit).count();
                        nanos = frac_nanos(&f[..n]);
                        rest = &f[n..];
                        frac_taken = true;
                    }
                }
                Chunk::LongYear => year = take_num(&mut rest, 4, 4)? as i16,
                Chunk::Year => {
                    let y = take_num(&mut rest, 2, 2)? as i16;
                    year = if y >= 69 { 1900 + y } else { 2000 + y };
                }
                Chunk::PM | Chunk::Pm => {
                    let p = rest.get(..2).ok_or_else(bad)?.to_ascii_uppercase();
                    pm = Some(match p.as_str() {
                        "PM" => true,
                        "AM" => false,
                        _ => return Err(bad()),
                    });
                    rest = &rest[2..];
                }
                Chunk::TzName => {
                    let n = rest.bytes().take_while(u8::is_ascii_uppercase).count();
                    if n < 3 {
                        return Err(bad());
                    }
                    if &rest[..n] == "UTC" || &rest[..n] == "GMT" {
                        offset = Some(0);
                    }
                    rest = &rest[n..];
                }
                Chunk::Offset(colon, secs, z, short) => {
                    if z && let Some(r) = rest.strip_prefix('Z') {
                        rest = r;
                        offset = Some(0);
                        continue;
                    }
                    let sign = match rest.as_bytes().first() {
                        Some(b'+') => 1,
                        Some(b'-') => -1,
                        _ => return Err(bad()),
                    };
                    rest = &rest[1..];
                    let h = take_num(&mut rest, 2, 2)?;
                    let mut total = h * 3600;
                    if !short {
                        if colon {
                            rest = rest.strip_prefix(':').ok_or_else(bad)?;
                        }
                        total += take_num(&mut rest, 2, 2)? * 60;
                    }
                    if secs {
                        if colon {
                            rest = rest.strip_prefix(':').ok_or_else(bad)?;
                        }
                        total += take_num(&mut rest, 2, 2)?;
                    }
                    offset = Some(sign * total as i32);
                }
                Chunk::Frac(n, trim, sep) => {
                    if let Some(f) = rest.strip_prefix(sep) {
                        let k = f.bytes().take_while(u8::is_ascii_digit).count();
                        if !trim && k != n {
                            return Err(bad());
                        }
                        nanos = frac_nanos(&f[..k]);
                        rest = &f[k..];
                    } else if !trim && !frac_taken {
                        return Err(bad());
                    }
                }
            },
        }
    }
    if !rest.is_empty() {
        return Err(format!("parsing time {value:?}: extra text: {rest:?}"));
    }
    if let Some(p) = pm {
        if hour > 12 {
            return Err(bad());
        }
        if p && hour < 12 {
            hour += 12;
        } else if !p && hour == 12 {
            hour = 0;
        }
    }
    let dt = jiff::civil::DateTime::new(year, month, day, hour, min, sec, nanos)
        .map_err(|e| format!("parsing time {value:?}: {e}"))?;
    let tz = match offset {
        Some(o) => {
            jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(o).map_err(|e| e.to_string())?)
        }
        None => jiff::tz::TimeZone::UTC,
    };
    dt.to_zoned(tz).map_err(|e| e.to_string())
}

fn frac_nanos(digits: &str) -> i32 {
    let mut d = digits.chars().take(9).collect::<String>();
    while d.len() < 9 {
        d.push('0');
    }
    d.parse().unwrap_or(0)
}

/// Go's `time.ParseDuration`: `1h30m`, `-1.5h`, `300ms`, `2us`.
pub(crate) fn parse_duration(t: &str) -> Result<i128, String> {
    let bad = || format!("time: invalid duration {t:?}");
    let (neg, mut rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if n == 0 {
            return Err(bad());
        }
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .char_indices()
            .take_while(|(_, c)| !c.is_ascii_digit() && *c != '.')
            .map(|(i, c)| i + c.len_utf8())
            .last()
            .unwrap_or(0);
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {t:?}")),
            other => return Err(format!("time: unknown unit {other:?} in duration {t:?}")),
        };
        rest = &rest[u..];
        total += num * unit;
    }
    if total > i64::MAX as f64 {
        return Err(format!("time: invalid duration {t:?}"));
    }
    Ok(if neg { -(total as i128) } else { total as i128 })
}

/// Sprig's `durationRound`: the largest unit the duration is more than (`2h`, `3d`).
fn duration_round(nanos: i128) -> String {
    let u = nanos.unsigned_abs();
    let second = 1_000_000_000u128;
    let units = [
        (second * 3600 * 24 * 365, "y"),
        (second * 3600 * 24 * 30, "mo"),
        (second * 3600 * 24, "d"),
        (second * 3600, "h"),
        (second * 60, "m"),
        (second, "s"),
    ];
    for (size, name) in units {
        if u > size {
            return format!("{}{name}", u / size);
        }
    }
    "0s".to_string()
}
