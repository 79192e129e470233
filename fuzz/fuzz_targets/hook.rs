//! A hook document and an event payload (separated by the first NUL byte): parsing and
//! validating the hook, checking the payload against its schema, and deciding (filter and
//! input mapping) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhook_hooks::{Event, Hook, check_payload, decide};

fuzz_target!(|data: &[u8]| {
    let (doc, payload) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(doc) = std::str::from_utf8(doc) else {
        return;
    };
    let Ok(hook) = Hook::parse(doc) else {
        return;
    };
    if hook.validate().is_err() {
        return;
    }
    let payload = serde_json::from_slice(payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(payload).into()));
    let _ = check_payload(&hook, &payload);
    let event = Event {
        fired_by: "webhook".into(),
        payload,
        method: "POST".into(),
        source: "fuzz".into(),
        ..Default::default()
    };
    let _ = decide(&hook, &event);
});
