//! A template document, as `PUT /api/v1/templates/{name}` and `template validate` take it:
//! parsing and validation (references, filters, action configurations) never panic, and
//! a template that validates also compiles for a run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhook_actions::{ActionSettings, Registry};
use taskhook_engine::{TemplateLimits, parse_and_validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let actions = Registry::builtin(&ActionSettings::default());
    if let Ok(template) = parse_and_validate(text, &actions) {
        taskhook_engine::compile_template(template, &actions, &TemplateLimits::default())
            .expect("a template that validates compiles");
    }
});
