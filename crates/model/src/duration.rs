//! Durations as templates and configurations write them: `"1h30m"`, `"10s"`, `"250ms"`, `"1.5s"`, or a number of seconds.
//! Parsing is pure and total: it never panics and rejects negative, non-finite or overflowing values.

use std::time::Duration;

use serde_json::Value;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration: a JSON number of seconds (`30`, `0.5`), a string holding a number of
/// seconds (`"30"`), or a string of `<number><unit>` parts (`"1h30m"`, `"250ms"`, `"1.5s"`).
/// Units: `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::Number(n) => {
            if let Some(secs) = n.as_u64() {
                return Ok(Duration::from_secs(secs));
            }
            match n.as_f64() {
                Some(secs) => from_secs_f64(secs),
                None => Err(format!("invalid duration {n}")),
            }
        }
        Value::String(s) => parse_duration_str(s),
        other => Err(format!(
            "expected a duration like \"30s\" or a number of seconds, got {other}"
        )),
    }
}

fn from_secs_f64(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "invalid duration {secs}: must be a non-negative number of seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {secs}s is too large"))
}

/// Parses a duration string: `"1h30m"`, `"250ms"`, or a number of seconds (`"30"`).
pub fn parse_duration_str(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration: expected something like \"30s\"".into());
    }
    let bad = |why: &str| format!("invalid duration {input:?}: {why}");
    let mut rest = s;
    let mut total: u128 = 0;
    let mut first = true;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(bad("expected a number before each unit"));
        }
        let number = &rest[..num_end];
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_end].trim_end();
        rest = &rest[unit_end..];
        let unit_nanos: u128 = match unit {
            "" if first && rest.is_empty() => NANOS_PER_SEC,
            "" => return Err(bad("missing unit (use ms, s, m, h or d)")),
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            other => {
                return Err(bad(&format!(
                    "unknown unit {other:?} (use ms, s, m, h or d)"
                )));
            }
        };
        let part =
            scaled(number, unit_nanos).ok_or_else(|| bad("not a valid number or too large"))?;
        total = total.checked_add(part).ok_or_else(|| bad("too large"))?;
        first = false;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| bad("too large"))?;
    // The remainder is below one second, so it always fits in u32.
    let nanos = u32::try_from(total % NANOS_PER_SEC).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Ten years (3650 days): the longest lifetime the API gives anything (a token's).
pub const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);

/// [`parse_duration_str`], refusing durations longer than `max` (so that adding one to a time
/// stays a time: an unbounded lifetime would overflow into no expiry at all).
pub fn parse_duration_at_most(input: &str, max: Duration) -> Result<Duration, String> {
    let d = parse_duration_str(input)?;
    if d > max {
        return Err(format!(
            "{input:?} is longer than the longest allowed, {}",
            describe_days(max)
        ));
    }
    Ok(d)
}

/// `max` as a whole number of days when it is one (`3650d`), else in seconds.
fn describe_days(max: Duration) -> String {
    if max.as_secs().is_multiple_of(DAY.as_secs()) && max.subsec_nanos() == 0 {
        format!("{}d", max.as_secs() / DAY.as_secs())
    } else {
        format!("{}s", max.as_secs_f64())
    }
}

/// A duration in milliseconds as `i64`, saturating: for arithmetic on Unix-millisecond times
/// that must never wrap.
pub fn as_millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `number` (digits with at most one '.') times `unit_nanos`, in nanoseconds, exactly.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if frac.contains('.') {
        return None;
    }
    let int_value: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int_value.checked_mul(unit_nanos)?;
    // Digits beyond 18 are below a nanosecond for every unit; ignore them.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        total = total.checked_add(frac_value.checked_mul(unit_nanos)? / scale)?;
    }
    Some(total)
}

/// Go's `Duration.String()` for `ns` nanoseconds: `846.889µs`, `1.5s`, `2m3.04s`, `-1h0m0s`.
pub fn go_duration(ns: i128) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let nanos = ns.unsigned_abs();
    let fraction = |value: u128, digits: usize| -> String {
        let unit = 10u128.pow(digits as u32);
        let whole = value / unit;
        let frac = format!("{:0digits$}", value % unit);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    };
    let mut out = String::from(if ns < 0 { "-" } else { "" });
    if nanos < 1_000 {
        out.push_str(&format!("{nanos}ns"));
    } else if nanos < 1_000_000 {
        out.push_str(&format!("{}µs", fraction(nanos, 3)));
    } else if nanos < 1_000_000_000 {
        out.push_str(&format!("{}ms", fraction(nanos, 6)));
    } else {
        let secs = nanos / 1_000_000_000;
        let (h, m) = (secs / 3600, secs / 60 % 60);
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{}s", fraction(nanos % 60_000_000_000, 9)));
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn go_durations() {
        for (ns, text) in [
            (0, "0s"),
            (120, "120ns"),
            (846_889, "846.889µs"),
            (1_500_000, "1.5ms"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (123_040_000_000, "2m3.04s"),
            ((3600 * 26 + 1) * 1_000_000_000, "26h0m1s"),
            (-3_600_000_000_000, "-1h0m0s"),
        ] {
            assert_eq!(go_duration(ns), text, "{ns}");
        }
    }

    use super::*;
    use serde_json::json;

    fn d(v: Value) -> Result<Duration, String> {
        parse_duration(&v)
    }

    #[test]
    fn units_and_numbers() {
        assert_eq!(d(json!("10s")), Ok(Duration::from_secs(10)));
        assert_eq!(d(json!("250ms")), Ok(Duration::from_millis(250)));
        assert_eq!(d(json!("2m")), Ok(Duration::from_secs(120)));
        assert_eq!(d(json!("1h30m")), Ok(Duration::from_secs(5400)));
        assert_eq!(d(json!("1h 30m 5s")), Ok(Duration::from_secs(5405)));
        assert_eq!(d(json!("1.5s")), Ok(Duration::from_millis(1500)));
        assert_eq!(d(json!("0.001s")), Ok(Duration::from_millis(1)));
        assert_eq!(d(json!("1d")), Ok(Duration::from_secs(86400)));
        assert_eq!(d(json!("10us")), Ok(Duration::from_micros(10)));
        assert_eq!(d(json!("7ns")), Ok(Duration::from_nanos(7)));
        assert_eq!(d(json!("30")), Ok(Duration::from_secs(30)));
        assert_eq!(d(json!(" 5s ")), Ok(Duration::from_secs(5)));
        assert_eq!(d(json!(30)), Ok(Duration::from_secs(30)));
        assert_eq!(d(json!(0.5)), Ok(Duration::from_millis(500)));
        assert_eq!(d(json!(0)), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            json!(""),
            json!("s"),
            json!("-5s"),
            json!("5x"),
            json!("1h30"),
            json!("1..5s"),
            json!("."),
            json!("1.2.3s"),
            json!("inf"),
            json!("NaN"),
            json!("99999999999999999999999999999999999999999h"),
            json!("18446744073709551616s"),
            json!(-1),
            json!(-0.5),
            json!(1e300),
            json!(true),
            json!(null),
            json!([1]),
            json!({"s": 1}),
        ] {
            assert!(d(bad.clone()).is_err(), "{bad} should be rejected");
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn bounded_durations_refuse_overflowing_ones() {
        assert_eq!(parse_duration_at_most("3650d", TEN_YEARS), Ok(TEN_YEARS));
        let e = parse_duration_at_most("3651d", TEN_YEARS).unwrap_err();
        assert!(e.contains("3650d"), "{e}");
        assert!(parse_duration_at_most("99999999999999d", TEN_YEARS).is_err());
        assert!(parse_duration_at_most("x", TEN_YEARS).is_err());
        assert_eq!(as_millis_i64(Duration::MAX), i64::MAX);
        assert_eq!(as_millis_i64(Duration::from_secs(2)), 2000);
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration_str("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration_str("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_duration(&json!(2)).unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration_str("1.5").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "s", "10x", "-1s", "1h-", "ms10"] {
            assert!(parse_duration_str(bad).is_err(), "{bad}");
        }
        assert!(parse_duration(&json!(-1)).is_err());
        assert!(parse_duration(&json!(true)).is_err());
    }
}
