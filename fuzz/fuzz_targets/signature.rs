//! Webhook signature checks for every provider: settings (JSON), then headers (`name: value`
//! lines) and the body, separated by NUL bytes. Verification never panics, and a body
//! changed after signing never passes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhook_hooks::WebhookSettings;
use taskhook_hooks::signature::{validate_settings, verify};

const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let (Some(settings), Some(headers), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(settings) = serde_json::from_slice::<WebhookSettings>(settings) else {
        return;
    };
    let headers = String::from_utf8_lossy(headers);
    let pairs: Vec<(String, String)> = headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let lookup = |name: &str| {
        let name = name.to_ascii_lowercase();
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let _ = validate_settings(&settings);
    if verify(&settings, &lookup, body, NOW).is_ok() {
        let mut tampered = body.to_vec();
        tampered.push(b'x');
        let still = verify(&settings, &lookup, &tampered, NOW);
        // Only a provider that signs nothing of the body (GitLab's shared token) may pass.
        assert!(
            still.is_err() || matches!(settings, WebhookSettings::Gitlab { .. }),
            "a changed body passed {settings:?}"
        );
    }
});
