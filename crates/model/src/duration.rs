//! Durations as templates write them: `250ms`, `10s`, `5m`, `1h30m`, or a number of seconds.

use std::time::Duration;

use serde_json::Value;

/// Parses `"1h30m"`, `"10s"`, `"250ms"`, `"2m"`, `"1d"` or a number of seconds.
pub fn parse_duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("invalid duration {n}")),
        Value::String(s) => parse_duration_str(s),
        other => Err(format!(
            "invalid duration {other}: use a string like \"30s\" or a number of seconds"
        )),
    }
}

pub fn parse_duration_str(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {s:?}: use a number with a unit, like 500ms, 30s, 5m, 1h30m");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return parse_duration(&serde_json::json!(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
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
