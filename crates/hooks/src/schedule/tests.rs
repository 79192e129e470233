use super::*;
use proptest::prelude::*;

fn ms(utc: &str) -> i64 {
    utc.parse::<Timestamp>().unwrap().as_millisecond()
}

fn show(ms: i64) -> String {
    Timestamp::from_millisecond(ms).unwrap().to_string()
}

fn paris(expr: &str) -> Schedule {
    Schedule::parse(expr, "Europe/Paris").unwrap()
}

/// Every due time in `(from, to]`, by walking `next_after`.
fn fires(schedule: &Schedule, from: i64, to: i64) -> Vec<String> {
    fire_times(schedule, from, to)
        .into_iter()
        .map(show)
        .collect()
}

fn fire_times(schedule: &Schedule, from: i64, to: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut at = from;
    while let Some(next) = schedule.next_after(at) {
        if next > to {
            break;
        }
        out.push(next);
        at = next;
    }
    out
}

/// Every due time in `(from, to]`, by walking `last_at_or_before` backwards.
fn fire_times_backwards(schedule: &Schedule, from: i64, to: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut at = to;
    while let Some(last) = schedule.last_at_or_before(at) {
        if last <= from {
            break;
        }
        out.push(last);
        at = last - 1;
    }
    out.reverse();
    out
}

#[test]
fn parses_five_and_six_fields() {
    let five = Schedule::parse(" 30 9 * * MON-FRI ", "UTC").unwrap();
    assert_eq!(five.expression(), "30 9 * * MON-FRI");
    assert_eq!(five.timezone(), "UTC");
    // 2026-01-02 is a Friday.
    assert_eq!(
        five.upcoming(ms("2026-01-02T09:30:00Z"), 2)
            .into_iter()
            .map(show)
            .collect::<Vec<_>>(),
        ["2026-01-05T09:30:00Z", "2026-01-06T09:30:00Z"]
    );

    let six = Schedule::parse("*/20 * * * * *", "UTC").unwrap();
    assert_eq!(
        six.upcoming(ms("2026-01-01T00:00:00.500Z"), 3)
            .into_iter()
            .map(show)
            .collect::<Vec<_>>(),
        [
            "2026-01-01T00:00:20Z",
            "2026-01-01T00:00:40Z",
            "2026-01-01T00:01:00Z"
        ]
    );
    for (expr, expected) in [
        ("@hourly", "2026-01-01T01:00:00Z"),
        ("@DAILY", "2026-01-02T00:00:00Z"),
        ("0 0 L 2 *", "2026-02-28T00:00:00Z"),
        ("0 0 29 2 *", "2028-02-29T00:00:00Z"),
        ("0 12 ? * 5#2", "2026-01-09T12:00:00Z"),
        ("0 0 13 * +FRI", "2026-02-13T00:00:00Z"),
        ("0 0 13 * FRI", "2026-01-02T00:00:00Z"),
    ] {
        let schedule = Schedule::parse(expr, "UTC").unwrap();
        assert_eq!(
            schedule
                .next_after(ms("2026-01-01T00:00:00Z"))
                .map(show)
                .as_deref(),
            Some(expected),
            "{expr}"
        );
    }
}

#[test]
fn next_after_is_strict_at_millisecond_precision() {
    let every_minute = Schedule::parse("* * * * *", "UTC").unwrap();
    let t = ms("2026-01-01T10:00:00Z");
    assert_eq!(every_minute.next_after(t - 1), Some(t));
    assert_eq!(every_minute.next_after(t), Some(t + 60_000));
    assert_eq!(every_minute.next_after(t + 999), Some(t + 60_000));
    assert_eq!(every_minute.last_at_or_before(t), Some(t));
    assert_eq!(every_minute.last_at_or_before(t - 1), Some(t - 60_000));
    // Before the epoch too.
    let t = ms("1969-12-31T23:59:00Z");
    assert_eq!(every_minute.next_after(t - 1), Some(t));
    assert_eq!(every_minute.next_after(t - 60_000), Some(t));
}

#[test]
fn errors_say_what_and_why() {
    let expression = |expr: &str| match Schedule::parse(expr, "UTC") {
        Err(ScheduleError::InvalidExpression { reason, .. }) => reason,
        other => panic!("{expr}: {other:?}"),
    };
    assert_eq!(expression(""), "is empty");
    assert!(expression("* * * *").starts_with("has 4 fields; expected 5"));
    assert!(expression("0 0 0 * * * 2026").starts_with("has 7 fields"));
    assert!(expression("@reboot").contains("unknown nickname `@reboot`"));
    assert!(
        expression("61 * * * *")
            .to_lowercase()
            .contains("out of bounds")
            || !expression("61 * * * *").is_empty()
    );
    assert!(!expression("* * * * MOON").is_empty());
    assert!(!expression("*/0 * * * *").is_empty());
    assert!(expression("0 0 30 2 *").contains("matches no date"));
    assert!(expression("0 0 31 4,6,9,11 *").contains("matches no date"));
    assert!(expression(&"1,".repeat(200)).contains("longer than"));

    let error = Schedule::parse("0 9 * * *", "Mars/Olympus_Mons").unwrap_err();
    assert!(
        matches!(&error, ScheduleError::UnknownTimeZone { timezone, .. } if timezone == "Mars/Olympus_Mons")
    );
    assert!(
        error
            .to_string()
            .starts_with("unknown time zone `Mars/Olympus_Mons`: "),
        "{error}"
    );
    assert!(matches!(
        Schedule::parse("0 9 * * *", " "),
        Err(ScheduleError::UnknownTimeZone { .. })
    ));
    let error = Schedule::parse("0 9 * *", "UTC").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid cron expression `0 9 * *`: has 4 fields"),
        "{error}"
    );
}

#[test]
fn time_zone_is_applied() {
    let nine = Schedule::parse("0 9 * * *", "America/New_York").unwrap();
    // Winter: UTC-5; summer: UTC-4.
    assert_eq!(
        nine.next_after(ms("2026-01-15T00:00:00Z"))
            .map(show)
            .unwrap(),
        "2026-01-15T14:00:00Z"
    );
    assert_eq!(
        nine.next_after(ms("2026-07-15T00:00:00Z"))
            .map(show)
            .unwrap(),
        "2026-07-15T13:00:00Z"
    );
    let kolkata = Schedule::parse("0 9 * * *", "Asia/Kolkata").unwrap();
    assert_eq!(
        kolkata
            .next_after(ms("2026-01-15T00:00:00Z"))
            .map(show)
            .unwrap(),
        "2026-01-15T03:30:00Z"
    );
}

// Europe/Paris, 2026: clocks go forward on 29 March at 01:00 UTC (02:00 CET
// becomes 03:00 CEST) and back on 25 October at 01:00 UTC (03:00 CEST becomes
// 02:00 CET).
const SPRING_DAY: (&str, &str) = ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z");
const FALL_DAY: (&str, &str) = ("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z");

#[test]
fn spring_forward_fixed_time_fires_once_right_after_the_jump() {
    let schedule = paris("30 2 * * *");
    assert_eq!(
        fires(
            &schedule,
            ms("2026-03-27T12:00:00Z"),
            ms("2026-03-31T12:00:00Z")
        ),
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ]
    );
    assert_eq!(
        fires(&schedule, ms(SPRING_DAY.0), ms(SPRING_DAY.1)).len(),
        1
    );
    // Six fields say the same.
    assert_eq!(
        fire_times(&paris("0 30 2 * * *"), ms(SPRING_DAY.0), ms(SPRING_DAY.1)),
        fire_times(&schedule, ms(SPRING_DAY.0), ms(SPRING_DAY.1)),
    );
    // Several skipped times make one due time, merged with a 03:00 one.
    assert_eq!(
        fires(&paris("0,30 2,3 * * *"), ms(SPRING_DAY.0), ms(SPRING_DAY.1)),
        ["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"]
    );
    // A list of hours names times of day too.
    assert_eq!(
        fires(&paris("30 2,14 * * *"), ms(SPRING_DAY.0), ms(SPRING_DAY.1)),
        ["2026-03-29T01:00:00Z", "2026-03-29T12:30:00Z"]
    );
    // Not on a day that does not match.
    assert_eq!(
        fires(&paris("30 2 * * MON"), ms(SPRING_DAY.0), ms(SPRING_DAY.1)),
        Vec::<String>::new()
    );
}

#[test]
fn spring_forward_hourly_fires_23_times() {
    let hourly = fires(
        &paris("0 * * * *"),
        ms(SPRING_DAY.0) - 1,
        ms(SPRING_DAY.1) - 1,
    );
    assert_eq!(hourly.len(), 23);
    assert_eq!(hourly[0], "2026-03-28T23:00:00Z"); // 00:00 CET
    assert_eq!(hourly[1], "2026-03-29T00:00:00Z"); // 01:00 CET
    assert_eq!(hourly[2], "2026-03-29T01:00:00Z"); // 03:00 CEST; 02:00 never was
    // Every half hour in the hour that does not exist: nothing.
    assert_eq!(
        fires(
            &paris("*/30 * * * *"),
            ms("2026-03-29T00:15:00Z"),
            ms("2026-03-29T01:45:00Z")
        ),
        [
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z"
        ]
    );
}

#[test]
fn fall_back_fixed_time_fires_once() {
    let schedule = paris("30 2 * * *");
    assert_eq!(
        fires(
            &schedule,
            ms("2026-10-23T12:00:00Z"),
            ms("2026-10-26T12:00:00Z")
        ),
        [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // the first 02:30, CEST; not again at 02:30 CET
            "2026-10-26T01:30:00Z", // 02:30 CET
        ]
    );
    // Asked from inside the repeated hour, in either pass.
    assert_eq!(
        schedule
            .next_after(ms("2026-10-25T00:45:00Z"))
            .map(show)
            .unwrap(),
        "2026-10-26T01:30:00Z"
    );
    assert_eq!(
        schedule
            .next_after(ms("2026-10-25T01:10:00Z"))
            .map(show)
            .unwrap(),
        "2026-10-26T01:30:00Z"
    );
    assert_eq!(
        schedule
            .last_at_or_before(ms("2026-10-25T01:10:00Z"))
            .map(show)
            .unwrap(),
        "2026-10-25T00:30:00Z"
    );
    assert_eq!(
        schedule
            .last_at_or_before(ms("2026-10-25T01:59:59Z"))
            .map(show)
            .unwrap(),
        "2026-10-25T00:30:00Z"
    );
    // Fixed hours with several minutes: the first pass only.
    assert_eq!(
        fires(&paris("*/30 2 * * *"), ms(FALL_DAY.0), ms(FALL_DAY.1)),
        ["2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z"]
    );
    assert_eq!(
        fires(&paris("30 2,14 * * *"), ms(FALL_DAY.0), ms(FALL_DAY.1)),
        ["2026-10-25T00:30:00Z", "2026-10-25T13:30:00Z"]
    );
}

#[test]
fn fall_back_hourly_fires_every_real_hour() {
    let schedule = paris("0 * * * *");
    let hourly = fire_times(&schedule, ms(FALL_DAY.0) - 1, ms(FALL_DAY.1) - 1);
    assert_eq!(hourly.len(), 25);
    assert!(hourly.windows(2).all(|w| w[1] - w[0] == 3_600_000));
    assert_eq!(show(hourly[2]), "2026-10-25T00:00:00Z"); // 02:00 CEST
    assert_eq!(show(hourly[3]), "2026-10-25T01:00:00Z"); // 02:00 CET
    // From inside the first pass, the second pass is next.
    assert_eq!(
        schedule
            .next_after(ms("2026-10-25T00:59:59Z"))
            .map(show)
            .unwrap(),
        "2026-10-25T01:00:00Z"
    );
    assert_eq!(
        schedule
            .last_at_or_before(ms("2026-10-25T01:30:00Z"))
            .map(show)
            .unwrap(),
        "2026-10-25T01:00:00Z"
    );
    // Every 20 minutes of real time through the repeated hour.
    assert_eq!(
        fires(
            &paris("*/20 * * * *"),
            ms("2026-10-24T23:50:00Z"),
            ms("2026-10-25T02:00:00Z")
        ),
        [
            "2026-10-25T00:00:00Z",
            "2026-10-25T00:20:00Z",
            "2026-10-25T00:40:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:20:00Z",
            "2026-10-25T01:40:00Z",
            "2026-10-25T02:00:00Z",
        ]
    );
    // Every other hour (`*/2`) follows elapsed time as well: both 02:00.
    assert_eq!(
        fires(
            &paris("0 */2 * * *"),
            ms("2026-10-24T21:30:00Z"),
            ms("2026-10-25T03:30:00Z")
        ),
        [
            "2026-10-24T22:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T03:00:00Z",
        ]
    );
}

#[test]
fn other_zones() {
    // New York falls back at 06:00 UTC on 2026-11-01 (02:00 EDT becomes 01:00 EST).
    let schedule = Schedule::parse("30 1 * * *", "America/New_York").unwrap();
    assert_eq!(
        fires(
            &schedule,
            ms("2026-10-31T12:00:00Z"),
            ms("2026-11-02T12:00:00Z")
        ),
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    );
    // Lord Howe Island moves by 30 minutes.
    let schedule = Schedule::parse("15 2 * * *", "Australia/Lord_Howe").unwrap();
    // 2026-10-04: 02:00 +10:30 becomes 02:30 +11 (15:30 UTC on the 3rd).
    assert_eq!(
        fires(
            &schedule,
            ms("2026-10-02T12:00:00Z"),
            ms("2026-10-04T18:00:00Z")
        ),
        [
            "2026-10-02T15:45:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-04T15:15:00Z"
        ]
    );
    // Santiago jumps at midnight: 2026-09-06 00:00 -04 becomes 01:00 -03.
    let schedule = Schedule::parse("0 0 * * *", "America/Santiago").unwrap();
    assert_eq!(
        fires(
            &schedule,
            ms("2026-09-05T00:00:00Z"),
            ms("2026-09-07T12:00:00Z")
        ),
        [
            "2026-09-05T04:00:00Z",
            "2026-09-06T04:00:00Z",
            "2026-09-07T03:00:00Z"
        ]
    );
}

#[test]
fn due_times_policies() {
    let daily = [Schedule::parse("0 9 * * *", "UTC").unwrap()];
    let created = ms("2026-01-01T00:00:00Z");
    let last = Some(ms("2026-01-02T09:00:00Z"));
    let now = ms("2026-01-05T09:00:30Z");
    let grace = 60_000;

    let due = |policy, last, now, max| due_times(&daily, last, created, now, policy, grace, max);
    assert_eq!(
        due(Misfire::FireOnce, last, now, 10),
        [ms("2026-01-05T09:00:00Z")]
    );
    assert_eq!(
        due(Misfire::Skip, last, now, 10),
        [ms("2026-01-05T09:00:00Z")]
    );
    assert_eq!(
        due(Misfire::CatchUp, last, now, 10),
        [
            ms("2026-01-03T09:00:00Z"),
            ms("2026-01-04T09:00:00Z"),
            ms("2026-01-05T09:00:00Z")
        ]
    );
    assert_eq!(
        due(Misfire::CatchUp, last, now, 2),
        [ms("2026-01-04T09:00:00Z"), ms("2026-01-05T09:00:00Z")]
    );
    assert_eq!(due(Misfire::CatchUp, last, now, 0), Vec::<i64>::new());

    // Past the grace period, Skip fires nothing; the others still do.
    let late = ms("2026-01-05T09:01:00.001Z");
    assert_eq!(due(Misfire::Skip, last, late, 10), Vec::<i64>::new());
    assert_eq!(
        due(Misfire::Skip, last, late - 1, 10),
        [ms("2026-01-05T09:00:00Z")]
    );
    assert_eq!(
        due(Misfire::FireOnce, last, late, 10),
        [ms("2026-01-05T09:00:00Z")]
    );

    // Already fired: nothing.
    let fired = Some(ms("2026-01-05T09:00:00Z"));
    for policy in [Misfire::Skip, Misfire::FireOnce, Misfire::CatchUp] {
        assert_eq!(due(policy, fired, now, 10), Vec::<i64>::new(), "{policy:?}");
    }
    // Exactly on time.
    let on_time = ms("2026-01-05T09:00:00Z");
    for policy in [Misfire::Skip, Misfire::FireOnce, Misfire::CatchUp] {
        assert_eq!(due(policy, last, on_time, 1), [on_time], "{policy:?}");
        let expected = match policy {
            Misfire::Skip => 0,
            Misfire::FireOnce => 1,
            Misfire::CatchUp => 2,
        };
        assert_eq!(
            due(policy, last, on_time - 1, 10).len(),
            expected,
            "{policy:?}"
        );
    }

    // Never fired: counted from creation, and never at or before it.
    let created_at_nine = ms("2026-01-03T09:00:00Z");
    assert_eq!(
        due_times(
            &daily,
            None,
            created_at_nine,
            now,
            Misfire::CatchUp,
            grace,
            10
        ),
        [ms("2026-01-04T09:00:00Z"), ms("2026-01-05T09:00:00Z")]
    );
    assert_eq!(
        due_times(&daily, None, now, now + 1000, Misfire::CatchUp, grace, 10),
        Vec::<i64>::new()
    );
    // A last fire older than the hook (say, re-created) does not bring back older times.
    assert_eq!(
        due_times(
            &daily,
            Some(created),
            created_at_nine,
            now,
            Misfire::CatchUp,
            grace,
            10
        )
        .len(),
        2
    );
    // Now before the last fire (clock skew): nothing.
    assert_eq!(due(Misfire::CatchUp, last, created, 10), Vec::<i64>::new());
    // No schedules: nothing.
    assert_eq!(
        due_times(&[], None, created, now, Misfire::CatchUp, grace, 10),
        Vec::<i64>::new()
    );
}

#[test]
fn due_times_merge_several_schedules() {
    let schedules = [
        Schedule::parse("0 9 * * *", "UTC").unwrap(),
        Schedule::parse("0 10 * * *", "Europe/Paris").unwrap(), // 09:00 UTC in winter
        Schedule::parse("0 12 * * *", "UTC").unwrap(),
    ];
    let created = ms("2026-01-01T10:00:00Z");
    let now = ms("2026-01-02T23:00:00Z");
    assert_eq!(
        due_times(&schedules, None, created, now, Misfire::CatchUp, 0, 100),
        [
            ms("2026-01-01T12:00:00Z"),
            ms("2026-01-02T09:00:00Z"),
            ms("2026-01-02T12:00:00Z"),
        ]
    );
    assert_eq!(
        due_times(&schedules, None, created, now, Misfire::FireOnce, 0, 100),
        [ms("2026-01-02T12:00:00Z")]
    );
    assert_eq!(
        next_due(&schedules, now).map(show).unwrap(),
        "2026-01-03T09:00:00Z"
    );
    assert_eq!(
        next_due(&schedules, ms("2026-01-03T09:00:00Z"))
            .map(show)
            .unwrap(),
        "2026-01-03T12:00:00Z"
    );
    assert_eq!(next_due(&[], now), None);
}

#[test]
fn due_times_across_fall_back() {
    let hourly = [paris("0 * * * *")];
    let due = due_times(
        &hourly,
        Some(ms(FALL_DAY.0) - 1),
        0,
        ms(FALL_DAY.1) - 1,
        Misfire::CatchUp,
        0,
        100,
    );
    assert_eq!(due.len(), 25);
    let fixed = [paris("30 2 * * *")];
    let due = due_times(
        &fixed,
        None,
        ms(FALL_DAY.0),
        ms(FALL_DAY.1),
        Misfire::CatchUp,
        0,
        100,
    );
    assert_eq!(due, [ms("2026-10-25T00:30:00Z")]);
    // Asked between the two 02:30s, FireOnce does not fire a second time.
    let due = due_times(
        &fixed,
        Some(ms("2026-10-25T00:30:00Z")),
        0,
        ms("2026-10-25T01:45:00Z"),
        Misfire::FireOnce,
        0,
        1,
    );
    assert_eq!(due, Vec::<i64>::new());
}

#[test]
fn catch_up_is_capped() {
    let every_second = [Schedule::parse("* * * * * *", "UTC").unwrap()];
    let due = due_times(
        &every_second,
        None,
        0,
        ms("2026-01-01T00:00:00Z"),
        Misfire::CatchUp,
        0,
        usize::MAX,
    );
    assert_eq!(due.len(), MAX_CATCH_UP);
    assert_eq!(*due.last().unwrap(), ms("2026-01-01T00:00:00Z"));
}

#[test]
fn extreme_inputs_do_not_panic() {
    let schedules = [
        Schedule::parse("* * * * * *", "UTC").unwrap(),
        Schedule::parse("0 0 29 2 *", "Europe/Paris").unwrap(),
    ];
    for at in [
        i64::MIN,
        i64::MIN + 1,
        -1,
        0,
        i64::MAX - 1,
        i64::MAX,
        ms("4999-12-31T23:59:59Z"),
        ms("9999-12-30T00:00:00Z"),
    ] {
        for schedule in &schedules {
            if let Some(next) = schedule.next_after(at) {
                assert!(next > at);
            }
            if let Some(last) = schedule.last_at_or_before(at) {
                assert!(last <= at);
            }
        }
        let _ = next_due(&schedules, at);
        for policy in [Misfire::Skip, Misfire::FireOnce, Misfire::CatchUp] {
            for (last, created) in [(None, i64::MIN), (Some(i64::MIN), at), (Some(at), i64::MAX)] {
                let due = due_times(&schedules, last, created, at, policy, i64::MIN, 3);
                assert!(due.len() <= 3);
                let _ = due_times(&schedules, last, created, at, policy, i64::MAX, 3);
            }
        }
    }
    assert_eq!(schedules[0].next_after(i64::MAX), None);
}

#[test]
fn serde_of_misfire() {
    assert_eq!(
        serde_json::to_value(Misfire::FireOnce).unwrap(),
        "fire_once"
    );
    assert_eq!(serde_json::to_value(Misfire::CatchUp).unwrap(), "catch_up");
    assert_eq!(
        serde_json::from_value::<Misfire>("skip".into()).unwrap(),
        Misfire::Skip
    );
    assert_eq!(Misfire::default(), Misfire::FireOnce);
}

fn expressions() -> impl Strategy<Value = String> {
    let second = prop_oneof![
        Just(None),
        Just(Some("0")),
        Just(Some("*/20")),
        Just(Some("30"))
    ];
    let minute = prop_oneof![
        Just("0"),
        Just("30"),
        Just("*/15"),
        Just("*"),
        Just("0,45"),
        Just("5-10")
    ];
    let hour = prop_oneof![
        Just("*"),
        Just("2"),
        Just("1,2,3"),
        Just("*/2"),
        Just("0"),
        Just("2-3"),
        Just("23")
    ];
    let dom = prop_oneof![Just("*"), Just("1"), Just("L"), Just("29"), Just("25-31")];
    let month = prop_oneof![Just("*"), Just("3"), Just("10"), Just("3,10,11"), Just("9")];
    let dow = prop_oneof![Just("*"), Just("0"), Just("1-5"), Just("SUN"), Just("6")];
    (second, minute, hour, dom, month, dow).prop_map(|(s, mi, h, d, mo, w)| {
        let five = format!("{mi} {h} {d} {mo} {w}");
        match s {
            Some(s) => format!("{s} {five}"),
            None => five,
        }
    })
}

fn zones() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("Europe/Paris"),
        Just("America/New_York"),
        Just("Australia/Lord_Howe"),
        Just("America/Santiago"),
        Just("Asia/Kolkata"),
        Just("UTC"),
    ]
}

/// Instants around 2026's DST transitions (where bugs would hide), or anywhere.
fn instants() -> impl Strategy<Value = i64> {
    let near = |utc: &str| {
        let t = ms(utc);
        (t - 3 * 86_400_000)..(t + 3 * 86_400_000)
    };
    prop_oneof![
        near("2026-03-29T01:00:00Z"),
        near("2026-10-25T01:00:00Z"),
        near("2026-11-01T06:00:00Z"),
        near("2026-04-04T15:00:00Z"),
        near("2026-09-06T04:00:00Z"),
        ms("1900-01-01T00:00:00Z")..ms("2300-01-01T00:00:00Z"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn next_after_is_strictly_increasing(expr in expressions(), zone in zones(), start in instants()) {
        let schedule = Schedule::parse(&expr, zone).unwrap();
        let mut at = start;
        for _ in 0..30 {
            let Some(next) = schedule.next_after(at) else { break };
            prop_assert!(next > at, "{expr} {zone}: next_after({}) = {}", show(at), show(next));
            prop_assert_eq!(next % 1000, 0);
            at = next;
        }
    }

    #[test]
    fn next_after_is_monotonic_and_misses_nothing(expr in expressions(), zone in zones(), a in instants(), delta in 0i64..86_400_000) {
        let schedule = Schedule::parse(&expr, zone).unwrap();
        let b = a.saturating_add(delta);
        let (na, nb) = (schedule.next_after(a), schedule.next_after(b));
        if let (Some(na), Some(nb)) = (na, nb) {
            prop_assert!(na <= nb);
            // Nothing due in (a, na) that next_after(b) would find.
            prop_assert!(nb >= na);
            if b < na {
                prop_assert_eq!(nb, na);
            }
        }
        // Backwards and forwards agree: the last due time at or before `a` is
        // the one next_after finds from just before it, and nothing is due
        // between it and `a`.
        if let Some(last) = schedule.last_at_or_before(a) {
            prop_assert!(last <= a);
            prop_assert_eq!(schedule.next_after(last - 1), Some(last), "{} {}: last_at_or_before({})", expr, zone, show(a));
            if let Some(next) = schedule.next_after(last) {
                prop_assert!(next > a, "{} {}: {} lies between last_at_or_before({}) = {} and it", expr, zone, show(next), show(a), show(last));
            }
        }
    }

    #[test]
    fn forward_and_backward_walks_agree(expr in expressions(), zone in zones(), from in instants(), span in 0i64..(2 * 86_400_000)) {
        let schedule = Schedule::parse(&expr, zone).unwrap();
        let to = from + span;
        prop_assert_eq!(fire_times(&schedule, from, to), fire_times_backwards(&schedule, from, to), "{} {}", expr, zone);
    }

    #[test]
    fn catch_up_is_bounded_and_in_range(
        exprs in proptest::collection::vec(expressions(), 1..3),
        zone in zones(),
        last in instants(),
        span in 0i64..(3 * 86_400_000),
        created_before in 0i64..86_400_000,
        max in 0usize..40,
    ) {
        let schedules: Vec<Schedule> = exprs.iter().map(|e| Schedule::parse(e, zone).unwrap()).collect();
        let now = last + span;
        let due = due_times(&schedules, Some(last), last - created_before, now, Misfire::CatchUp, 0, max);
        prop_assert!(due.len() <= max);
        prop_assert!(due.iter().all(|&d| d > last && d <= now));
        prop_assert!(due.windows(2).all(|w| w[0] < w[1]));

        // The newest `max` of every due time in (last, now], found forwards.
        let mut all: Vec<i64> = schedules.iter().flat_map(|s| fire_times(s, last, now)).collect();
        all.sort_unstable();
        all.dedup();
        let latest = all.last().map(|&d| vec![d]).unwrap_or_default();
        let expected = all.split_off(all.len().saturating_sub(max));
        prop_assert_eq!(&due, &expected);

        let once = due_times(&schedules, Some(last), last - created_before, now, Misfire::FireOnce, 0, max);
        prop_assert_eq!(once, latest);
    }

    #[test]
    fn parse_never_panics(expr in "\\PC{0,40}", fields in proptest::collection::vec("[0-9*/,LW#?A-Z+-]{1,6}", 0..8), zone in "\\PC{0,20}") {
        let _ = Schedule::parse(&expr, &zone);
        if let Ok(schedule) = Schedule::parse(&fields.join(" "), "Europe/Paris") {
            let t = ms("2026-10-25T00:59:00Z");
            if let Some(next) = schedule.next_after(t) {
                prop_assert!(next > t);
            }
            if let Some(last) = schedule.last_at_or_before(t) {
                prop_assert!(last <= t);
            }
        }
    }
}
