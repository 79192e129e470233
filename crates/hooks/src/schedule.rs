//! Cron schedules evaluated in an IANA time zone, and the due-time arithmetic a
//! scheduler needs: the next due time across several expressions, and which
//! missed due times to fire after downtime under a [`Misfire`] policy.
//!
//! # Expressions
//!
//! Five fields (`minute hour day-of-month month day-of-week`, due at second 0)
//! or six with the seconds first, as [croner](https://docs.rs/croner) parses
//! them: `*`, lists, ranges, steps, names (`JAN`, `MON`), `L`, `W`, `#`, `?`,
//! and the nicknames `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@hourly`. When both day fields are restricted, a day matching either is due
//! (as in Vixie cron); a `+` before the day of week (`+MON`) asks for both.
//! An expression that matches no date at all (`0 0 30 2 *`) is refused.
//!
//! # Daylight saving time
//!
//! Expressions are matched against the wall clock of the schedule's time zone.
//! Where that clock jumps, the rule depends on the hour field, as in Vixie cron:
//!
//! * An hour field written with `*` (`*`, `*/2`) follows elapsed time. When the
//!   clock goes back, a repeated wall-clock time is due at both of its instants
//!   (`0 * * * *` is due 25 times on a 25-hour day); when it goes forward, the
//!   skipped wall-clock times are not due (23 times on a 23-hour day).
//! * Any other hour field (`2`, `2,14`, `1-3`) names times of day. A repeated
//!   wall-clock time is due once, at its first instant (`30 2 * * *` in
//!   Europe/Paris on 2026-10-25 is due at 02:30 CEST, not again at 02:30 CET);
//!   times skipped by the clock going forward are due once, at the first instant
//!   after the jump (`30 2 * * *` on 2026-03-29 is due at 03:00 CEST). Several
//!   skipped times of one jump make one due time.
//!
//! Due times are whole seconds, returned as unix milliseconds, and always
//! strictly increasing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 256;

/// The most due times [`due_times`] returns under [`Misfire::CatchUp`],
/// whatever `max` asks for.
pub const MAX_CATCH_UP: usize = 10_000;

const NICKNAMES: [&str; 6] = ["yearly", "annually", "monthly", "weekly", "daily", "hourly"];

/// Wall-clock matches that yield no new instant (the second instant of a
/// repeated time, or a skipped time) are passed over; a DST jump holds at most
/// a few thousand of them. This bound only guards against a bug looping forever.
const MAX_PASSED_OVER: usize = 1_000_000;

/// Why an expression or a time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression is not valid.
    #[error("invalid cron expression `{expression}`: {reason}")]
    InvalidExpression { expression: String, reason: String },
    /// The time zone is not an IANA time zone known here.
    #[error("unknown time zone `{timezone}`: {reason}")]
    UnknownTimeZone { timezone: String, reason: String },
}

/// A parsed cron expression in a time zone.
/// Cheap to clone: the parsed form is shared, and identical schedules (same expression and
/// time zone) parsed anywhere in the process share one parsed form, since a parsed cron
/// expression takes a few kilobytes and thousands of hooks often repeat a few expressions.
#[derive(Clone)]
pub struct Schedule {
    parsed: Arc<Parsed>,
}

impl std::ops::Deref for Schedule {
    type Target = Parsed;
    fn deref(&self) -> &Parsed {
        &self.parsed
    }
}

/// Parsed schedules by (expression, time zone), held weakly.
type SharedSchedules = HashMap<(String, String), Weak<Parsed>>;

#[doc(hidden)]
pub struct Parsed {
    expression: String,
    timezone: String,
    cron: Cron,
    tz: TimeZone,
    /// Whether the hour field is written with `*`, so the schedule follows
    /// elapsed time across DST jumps (see the module docs).
    follows_elapsed_time: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expression)
            .field("timezone", &self.timezone)
            .finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.timezone)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.timezone == other.timezone
    }
}

impl Eq for Schedule {}

impl Schedule {
    /// 5-field (minute precision) or 6-field (with seconds first) cron expression, in an IANA time zone.
    ///
    /// Surrounding spaces are ignored in both. The error says whether the
    /// expression or the time zone is at fault, and why.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        static SHARED: LazyLock<Mutex<SharedSchedules>> = LazyLock::new(Default::default);
        let key = (expr.trim().to_owned(), timezone.trim().to_owned());
        if let Some(parsed) = SHARED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Ok(Schedule { parsed });
        }
        let parsed = Arc::new(Self::parse_new(expr, timezone)?);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        // Forget schedules nobody holds any more, now and then (not on every parse).
        if shared.len() >= 1024 && shared.len().is_power_of_two() {
            shared.retain(|_, w| w.strong_count() > 0);
        }
        shared.insert(key, Arc::downgrade(&parsed));
        Ok(Schedule { parsed })
    }

    fn parse_new(expr: &str, timezone: &str) -> Result<Parsed, ScheduleError> {
        let expression = expr.trim();
        let invalid = |reason: String| ScheduleError::InvalidExpression {
            expression: expression.chars().take(MAX_EXPRESSION_LEN).collect(),
            reason,
        };
        if expression.is_empty() {
            return Err(invalid("is empty".to_owned()));
        }
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(invalid(format!(
                "is longer than {MAX_EXPRESSION_LEN} bytes"
            )));
        }
        if let Some(name) = expression.strip_prefix('@') {
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                return Err(invalid(format!(
                    "unknown nickname `@{name}`; expected one of @yearly, @annually, \
                     @monthly, @weekly, @daily or @hourly"
                )));
            }
        } else {
            let fields = expression.split_ascii_whitespace().count();
            if fields != 5 && fields != 6 {
                return Err(invalid(format!(
                    "has {fields} field{}; expected 5 (minute hour day-of-month month \
                     day-of-week) or 6 (second minute hour day-of-month month day-of-week)",
                    if fields == 1 { "" } else { "s" }
                )));
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| invalid(e.to_string()))?;

        // Without a year field, an expression repeats every 400 years (the
        // Gregorian cycle, weekdays included); croner's search covers more
        // than that before giving up.
        let probe = jiff::civil::date(2000, 1, 1).at(0, 0, 0, 0);
        if cron.find_next_occurrence(&probe, true).is_err() {
            return Err(invalid(
                "matches no date at all (such as the 30th of February)".to_owned(),
            ));
        }

        let timezone = timezone.trim();
        let unknown = |reason: String| ScheduleError::UnknownTimeZone {
            timezone: timezone.chars().take(64).collect(),
            reason,
        };
        if timezone.is_empty() {
            return Err(unknown(
                "is empty; use an IANA name such as `UTC` or `Europe/Paris`".to_owned(),
            ));
        }
        let tz = TimeZone::get(timezone).map_err(|e| unknown(e.to_string()))?;

        Ok(Parsed {
            expression: expression.to_owned(),
            timezone: timezone.to_owned(),
            follows_elapsed_time: cron.pattern.hours.from_wildcard,
            cron,
            tz,
        })
    }

    /// The expression, as given (trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone name, as given (trimmed).
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    /// The first due time strictly after `after` (unix milliseconds), or None if the expression never matches again.
    ///
    /// "Never again" only happens near the end of the supported range (year 5000).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        self.next_after_second(after_ms.div_euclid(1000))?
            .checked_mul(1000)
    }

    /// The last due time at or before `at_ms` (unix milliseconds), if any.
    pub fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        self.last_at_or_before_second(at_ms.div_euclid(1000))?
            .checked_mul(1000)
    }

    /// Up to `count` due times strictly after `after_ms`, oldest first; for
    /// showing what is coming.
    pub fn upcoming(&self, after_ms: i64, count: usize) -> Vec<i64> {
        let mut due = Vec::new();
        let mut at = after_ms;
        while due.len() < count {
            let Some(next) = self.next_after(at) else {
                break;
            };
            due.push(next);
            at = next;
        }
        due
    }

    /// The first due second strictly after `second`.
    fn next_after_second(&self, second: i64) -> Option<i64> {
        let second = second.max(Timestamp::MIN.as_second());
        let at = Timestamp::from_second(second).ok()?;
        let wall = self.tz.to_datetime(at);

        // Walk the wall clock forwards; each match yields its instants in order.
        let mut best = None;
        let mut cursor = wall;
        for _ in 0..MAX_PASSED_OVER {
            let Ok(matched) = self.cron.find_next_occurrence(&cursor, false) else {
                break;
            };
            if let Some(due) = self.instants(matched).into_iter().find(|&due| due > second) {
                best = Some(due);
                break;
            }
            cursor = matched;
        }

        // If `at` lies in the first pass of a repeated range of wall-clock
        // times, the second pass is still ahead, from the range's start; the
        // walk above, starting at `at`'s wall clock, does not go back there.
        if self.follows_elapsed_time
            && let AmbiguousOffset::Fold { before, after } =
                self.tz.to_ambiguous_timestamp(wall).offset()
            && self.tz.to_offset(at) == before
            && let Some(transition) = self.tz.following(at).next()
        {
            let second_pass_start = self.tz.to_datetime(transition.timestamp());
            if let Ok(matched) = self.cron.find_next_occurrence(&second_pass_start, true)
                && matched <= wall
                && let Ok(due) = after.to_timestamp(matched)
            {
                let due = due.as_second();
                if due > second {
                    best = Some(best.map_or(due, |b: i64| b.min(due)));
                }
            }
        }
        best
    }

    /// The last due second at or before `second`.
    fn last_at_or_before_second(&self, second: i64) -> Option<i64> {
        let second = second.min(Timestamp::MAX.as_second());
        let at = Timestamp::from_second(second).ok()?;
        let wall = self.tz.to_datetime(at);

        let mut best = None;
        let mut cursor = wall;
        let mut inclusive = true;
        for _ in 0..MAX_PASSED_OVER {
            let Ok(matched) = self.cron.find_previous_occurrence(&cursor, inclusive) else {
                break;
            };
            if let Some(due) = self
                .instants(matched)
                .into_iter()
                .rev()
                .find(|&due| due <= second)
            {
                best = Some(due);
                break;
            }
            cursor = matched;
            inclusive = false;
        }

        // If `at` lies in the second pass of a repeated range, the first pass
        // is wholly behind it, up to the range's end; the walk above, starting
        // at `at`'s wall clock, does not go forward there.
        if let AmbiguousOffset::Fold { before, after } =
            self.tz.to_ambiguous_timestamp(wall).offset()
            && self.tz.to_offset(at) == after
            && let Some(just_after) = at.checked_add(SignedDuration::from_nanos(1)).ok()
            && let Some(transition) = self.tz.preceding(just_after).next()
            && let Ok(first_pass_end) = transition
                .timestamp()
                .checked_sub(SignedDuration::from_secs(1))
        {
            let first_pass_end = self.tz.to_datetime(first_pass_end);
            if let Ok(matched) = self.cron.find_previous_occurrence(&first_pass_end, true)
                && matched > wall
                && let Ok(due) = before.to_timestamp(matched)
            {
                let due = due.as_second();
                if due <= second {
                    best = Some(best.map_or(due, |b: i64| b.max(due)));
                }
            }
        }
        best
    }

    /// The instants (unix seconds, ascending) at which a matching wall-clock
    /// time is due, following the DST rules of the module docs.
    fn instants(&self, wall: DateTime) -> Vec<i64> {
        let ambiguous = self.tz.to_ambiguous_timestamp(wall);
        let second =
            |offset: jiff::tz::Offset| offset.to_timestamp(wall).ok().map(|t| t.as_second());
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => second(offset).into_iter().collect(),
            AmbiguousOffset::Fold { before, after } => {
                let mut due: Vec<i64> = second(before).into_iter().collect();
                if self.follows_elapsed_time {
                    due.extend(second(after));
                }
                due
            }
            AmbiguousOffset::Gap { after, .. } => {
                if self.follows_elapsed_time {
                    return Vec::new();
                }
                // Read with the offset after the jump, a skipped time names an
                // instant before the jump, so the next transition is the jump.
                after
                    .to_timestamp(wall)
                    .ok()
                    .and_then(|t| self.tz.following(t).next())
                    .map(|transition| transition.timestamp().as_second())
                    .into_iter()
                    .collect()
            }
        }
    }
}

/// What to do with due times that passed while nothing fired them (downtime,
/// or a hook created with a backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Fire only a due time that passed less than the grace period ago.
    Skip,
    /// Fire once for everything missed.
    #[default]
    FireOnce,
    /// Fire every missed due time, up to a maximum.
    CatchUp,
}

/// Given the last due time that was fired (or None: the hook was just created at `created_ms`), and now,
/// the due times to fire now, oldest first: Skip → only a due time within `grace_ms` of now (if any);
/// FireOnce → the most recent missed due time (one fire); CatchUp → every missed due time, at most `max` (the oldest are dropped, keep the newest `max`).
///
/// "Missed" means in `(max(last_fired_ms, created_ms), now_ms]`: nothing at or
/// before the creation of the hook is ever due. Due times of several schedules
/// are merged, a time due in two of them counting once. Skip and FireOnce
/// return the most recent due time, if any (for Skip, only if
/// `now_ms - due <= grace_ms`). `max` is capped at [`MAX_CATCH_UP`].
pub fn due_times(
    schedules: &[Schedule],
    last_fired_ms: Option<i64>,
    created_ms: i64,
    now_ms: i64,
    policy: Misfire,
    grace_ms: i64,
    max: usize,
) -> Vec<i64> {
    let floor = last_fired_ms.map_or(created_ms, |last| last.max(created_ms));
    if now_ms <= floor {
        return Vec::new();
    }
    match policy {
        Misfire::Skip | Misfire::FireOnce => {
            let latest = schedules
                .iter()
                .filter_map(|schedule| schedule.last_at_or_before(now_ms))
                .filter(|&due| due > floor)
                .max();
            match latest {
                Some(due)
                    if policy == Misfire::Skip && now_ms.saturating_sub(due) > grace_ms.max(0) =>
                {
                    Vec::new()
                }
                Some(due) => vec![due],
                None => Vec::new(),
            }
        }
        Misfire::CatchUp => {
            let max = max.min(MAX_CATCH_UP);
            let mut due = Vec::new();
            for schedule in schedules {
                let mut at = now_ms;
                for _ in 0..max {
                    match schedule.last_at_or_before(at) {
                        Some(time) if time > floor => {
                            due.push(time);
                            at = time - 1;
                        }
                        _ => break,
                    }
                }
            }
            due.sort_unstable();
            due.dedup();
            let dropped = due.len().saturating_sub(max);
            due.split_off(dropped)
        }
    }
}

/// The next due time across several schedules after `after_ms`.
pub fn next_due(schedules: &[Schedule], after_ms: i64) -> Option<i64> {
    schedules
        .iter()
        .filter_map(|schedule| schedule.next_after(after_ms))
        .min()
}

#[cfg(test)]
mod tests;
