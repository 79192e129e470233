//! The published JSON Schema of templates (`docs/template-schema.json`): it is what
//! `taskhook template schema` prints, and it accepts the templates the server accepts, in
//! taskhook's form and µTask's. Every test that puts a template checks it against the schema
//! too (`support::Server::put_template`).

mod support;

use support::assert_schema_accepts;

#[test]
fn the_published_schema_is_current() {
    let (code, out, err) = support::taskhook(None, &["template", "schema"]);
    assert_eq!(code, 0, "{err}");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/template-schema.json"
    );
    let published = std::fs::read_to_string(path).unwrap();
    assert!(
        published == out,
        "docs/template-schema.json is out of date: regenerate it with\n  \
         cargo run -p taskhook -- template schema > docs/template-schema.json"
    );
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
}

#[test]
fn every_example_template_is_accepted() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/templates");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        taskhook_model::Template::parse(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_schema_accepts(&text);
        seen += 1;
    }
    assert!(seen > 0, "no example in {dir}");
}

/// What an editor should flag is flagged: a misspelt field, a value of the wrong type, an
/// unknown operator.
#[test]
fn mistakes_are_refused() {
    let schema = support::template_schema();
    for yaml in [
        "name: t\nsteps: {a: {action: {type: echo}, dependecies: [b]}}\n",
        "name: t\nauto_runnable: 'yes'\nsteps: {a: {action: {type: echo}}}\n",
        "name: t\nsteps: {a: {action: {type: echo}, conditions: [{type: skip, if: [{value: a, operator: LIKE, expected: b}], then: {this: DONE}}]}}\n",
        "name: t\nsteps: {a: {action: {type: 'no such/action'}}}\n",
    ] {
        let doc = taskhook_model::template::read_document(yaml).unwrap();
        assert!(!schema.is_valid(&doc), "{yaml}");
    }
}
