//! The OpenAPI document served at `/api/openapi.json`. utoipa derives it from the handlers'
//! annotations and the API types ([`crate::api::ApiDoc`]); [`document`] then completes every
//! operation from the rules the server itself follows, so that the two cannot drift:
//!
//! - the responses every operation can give besides its own (401 and 403 from the route
//!   table's access, 404 for a path naming an object, 400 for bad input, 413 for a body over
//!   the limit, 429 from the rate limits, 503 from the store or maintenance mode), each an
//!   `application/problem+json` [`Problem`](crate::Problem);
//! - the patterns of names in paths ([`taskhook_model::name`], secret names), the bounds of
//!   `limit` ([`crate::api::MAX_PAGE_LIMIT`]) and the form of each listing's `cursor`.
//!
//! A schema-driven fuzzer checks the result against the running server
//! (`crates/cli/tests/openapi.rs`, see `docs/openapi.md`).

use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use taskhook_model::validate::MAX_NAME_LEN;
use utoipa::OpenApi;

use crate::api::{ApiDoc, MAX_PAGE_LIMIT};
use crate::scopes::{Access, lookup};

/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The completed document (built once).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
        complete(&mut doc);
        doc
    })
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn complete(doc: &mut Value) {
    constrain_bodies(doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for method in METHODS {
            if let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) {
                complete_operation(path, method, op);
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let route = lookup(&method.to_uppercase(), path);
    let access = route.map_or(Access::Public, |r| r.access);
    let mut parameters = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for p in &mut parameters {
        complete_parameter(path, p);
    }
    let has_path_params = parameters.iter().any(|p| p["in"] == "path");
    let has_body = op.contains_key("requestBody");
    let has_input = !parameters.is_empty() || has_body;
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else { return };
    // What the handler declared: problems as problem+json, every response described.
    for (status, response) in responses.iter_mut() {
        as_problem_json(response);
        if response.get("description").is_none_or(|d| d == "") {
            response["description"] = json!(reason(status));
        }
    }
    let public = path == "/healthz" || path == "/api/openapi.json";
    let mut add = |status: u16, why: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| problem_response(why));
    };
    if has_input {
        add(400, "The request is invalid; `field` names what is wrong");
    }
    match access {
        Access::Public => {}
        Access::OwnCredential(_) => add(
            401,
            "The hook's own credential (token or signature) is wrong",
        ),
        Access::Scope => {
            add(401, "No valid bearer token");
            add(403, "The caller lacks the scope this needs");
        }
        Access::Filtered | Access::Authenticated => add(401, "No valid bearer token"),
    }
    if has_path_params {
        add(404, "No such object");
    }
    if has_body {
        add(413, "The body is larger than the configured limit");
    }
    if path != "/healthz" {
        add(
            429,
            "Request rate limit exceeded; retry after Retry-After seconds",
        );
    }
    if !public {
        add(
            503,
            "The database is unavailable, or maintenance mode refuses writes; retry after Retry-After seconds",
        );
    }
}

/// Declares what the server checks of a parameter: name patterns, page bounds, cursors.
fn complete_parameter(path: &str, p: &mut Value) {
    let name = p["name"].as_str().unwrap_or_default().to_string();
    let schema = match (p["in"].as_str(), name.as_str()) {
        (Some("path"), "name") if path.starts_with("/api/v1/secrets") => json!({
            "type": "string",
            "pattern": taskhook_model::secret::NAME_PATTERN,
            "minLength": 1,
            "maxLength": taskhook_model::secret::MAX_NAME_LEN,
        }),
        (Some("path"), "name") if path.starts_with("/api/v1/functions") => json!({
            "type": "string",
            "pattern": taskhook_model::name::function_pattern(),
            "minLength": 1,
            "maxLength": MAX_NAME_LEN,
        }),
        (Some("path"), "name") => name_schema(MAX_NAME_LEN),
        (Some("path"), "group" | "id") if path.starts_with("/api/v1/hooks") => {
            name_schema(taskhook_hooks::MAX_HOOK_PART_LEN)
        }
        (Some("path"), "id") => json!({"type": "string", "format": "uuid"}),
        (Some("query"), "limit") => json!({
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE_LIMIT,
            "default": crate::api::DEFAULT_PAGE_LIMIT,
        }),
        (Some("query"), "cursor") if path == "/api/v1/audit" => json!({
            "type": "string",
            "pattern": taskhook_store::AuditCursor::PATTERN,
        }),
        (Some("query"), "cursor") => json!({"type": "string", "format": "uuid"}),
        (Some("query"), "state") => {
            let states: Vec<&str> = taskhook_model::state::TASK_STATES
                .iter()
                .map(|s| s.as_str())
                .collect();
            json!({"type": "string", "pattern": any_case(&states)})
        }
        (Some("query"), "template") => name_schema(MAX_NAME_LEN),
        (Some("query"), "reason") => {
            json!({"type": "string", "enum": taskhook_store::BLOCKED_REASONS})
        }
        (Some("query"), "actor" | "action" | "target") => json!({
            "type": "string",
            "minLength": 1,
            "maxLength": crate::audit::MAX_FILTER_CHARS,
        }),
        (Some("query"), "outcome") => {
            json!({"type": "string", "pattern": crate::audit::OUTCOME_PATTERN})
        }
        (Some("query"), "kind") => json!({"type": "string", "pattern": crate::audit::KIND_PATTERN}),
        (Some("query"), "since" | "until") => json!({"type": "string", "format": "date-time"}),
        _ => return,
    };
    p["schema"] = schema;
}

/// A string without control characters (`char::is_control`), as user names are.
const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// A scope as `taskhook_model::scope::check` accepts it (with its length bounds beside it):
/// printable ASCII, `*` only at the end.
const SCOPE_PATTERN: &str = "^[!-)+-~]*[*]?$";
/// A token's user: printable ASCII without ':' (with its length bounds beside it).
const TOKEN_USER_PATTERN: &str = "^[!-9;-~]*$";

/// What the handlers check of request bodies, beyond the types utoipa derives.
fn constrain_bodies(doc: &mut Value) {
    let name = name_schema(MAX_NAME_LEN);
    let username = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::api::MAX_USERNAME_CHARS,
        "pattern": NO_CONTROL_PATTERN,
    });
    let usernames = json!({"type": "array", "items": username, "maxItems": crate::api::MAX_PEOPLE});
    let date_time = |nullable: bool| {
        let kind = if nullable {
            json!(["string", "null"])
        } else {
            json!("string")
        };
        json!({"type": kind, "format": "date-time"})
    };
    let constraints = [
        ("CreateTaskRequest", "template", name),
        (
            "CreateTaskRequest",
            "idempotency_key",
            json!({"type": ["string", "null"], "minLength": 1, "maxLength": crate::api::MAX_IDEMPOTENCY_KEY_CHARS}),
        ),
        ("CreateTaskRequest", "run_at", date_time(true)),
        ("CreateTaskRequest", "resolver_usernames", usernames.clone()),
        ("CreateTaskRequest", "watcher_usernames", usernames),
        (
            "CreateTokenRequest",
            "scopes",
            json!({
                "type": "array",
                "minItems": 1,
                "maxItems": crate::tokens_api::MAX_SCOPES,
                "items": {"type": "string", "minLength": 1, "maxLength": taskhook_model::scope::MAX_LEN, "pattern": SCOPE_PATTERN},
            }),
        ),
        (
            "CreateTokenRequest",
            "description",
            json!({"type": "string", "maxLength": crate::tokens_api::MAX_DESCRIPTION_CHARS}),
        ),
        ("CreateTokenRequest", "expires_at", date_time(true)),
        (
            "CreateTokenRequest",
            "user",
            json!({"type": ["string", "null"], "minLength": 1, "maxLength": crate::tokens_api::MAX_USER_LEN, "pattern": TOKEN_USER_PATTERN}),
        ),
        (
            "SecretRequest",
            "value",
            json!({"type": "string", "minLength": 1, "maxLength": crate::secrets_api::MAX_VALUE_BYTES, "description": "The value (never returned), at most 64 KiB as UTF-8"}),
        ),
        (
            "SecretRequest",
            "description",
            json!({"type": ["string", "null"], "maxLength": crate::secrets_api::MAX_DESCRIPTION_CHARS}),
        ),
        (
            "MaintenanceRequest",
            "message",
            json!({"type": ["string", "null"], "maxLength": crate::maintenance::MAX_MESSAGE_CHARS}),
        ),
    ];
    let retry = &mut doc["components"]["schemas"]["RetryRequest"];
    // At least one of them given, and not null (null is absent).
    retry["anyOf"] = json!(["ids", "reason", "template"].map(|f| json!({
        "required": [f], "properties": {f: {"not": {"type": "null"}}},
    })));
    let constraints = constraints.into_iter().chain([
        (
            "RetryRequest",
            "ids",
            json!({"type": ["array", "null"], "minItems": 1, "maxItems": crate::api::MAX_PAGE_LIMIT,
                   "items": {"type": "string"}}),
        ),
        (
            "RetryRequest",
            "reason",
            {
                let mut reasons: Vec<Value> =
                    taskhook_store::BLOCKED_REASONS.iter().map(|r| json!(r)).collect();
                reasons.push(Value::Null);
                json!({"type": ["string", "null"], "enum": reasons})
            },
        ),
        (
            "RerunRequest",
            "from",
            json!({"type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": "^[A-Za-z0-9_-]+$"}),
        ),
        (
            "CommentRequest",
            "content",
            json!({"type": "string", "minLength": 1, "maxLength": crate::task_ops::MAX_COMMENT_CHARS}),
        ),
        ("RetryRequest", "template", {
            let mut n = name_schema(MAX_NAME_LEN);
            n["type"] = json!(["string", "null"]);
            n
        }),
        (
            "RetryRequest",
            "limit",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": crate::api::MAX_PAGE_LIMIT}),
        ),
    ]);
    for (schema, field, constraint) in constraints {
        let property = &mut doc["components"]["schemas"][schema]["properties"][field];
        let description = property.get("description").cloned();
        *property = constraint;
        if let Some(d) = description
            && property.get("description").is_none()
        {
            property["description"] = d;
        }
    }
}

/// A case-insensitive regular expression of exactly `words` (task states are parsed so).
fn any_case(words: &[&str]) -> String {
    let alternatives: Vec<String> = words
        .iter()
        .map(|w| {
            w.chars()
                .map(|c| match (c.to_ascii_lowercase(), c.to_ascii_uppercase()) {
                    (l, u) if l != u => format!("[{u}{l}]"),
                    _ => regex_escape(c),
                })
                .collect()
        })
        .collect();
    format!("^({})$", alternatives.join("|"))
}

fn regex_escape(c: char) -> String {
    if c.is_ascii_alphanumeric() || c == '_' {
        c.to_string()
    } else {
        format!("\\{c}")
    }
}

fn name_schema(max: usize) -> Value {
    json!({
        "type": "string",
        "pattern": taskhook_model::name::pattern(),
        "minLength": 1,
        "maxLength": max,
    })
}

/// A response whose body is a `Problem`, served as `application/problem+json`.
fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    })
}

/// Moves a `Problem` body declared as `application/json` to `application/problem+json`.
fn as_problem_json(response: &mut Value) {
    let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    let is_problem = content
        .get("application/json")
        .is_some_and(|c| c["schema"]["$ref"] == "#/components/schemas/Problem");
    if is_problem && let Some(c) = content.remove("application/json") {
        content.insert(PROBLEM_JSON.into(), c);
    }
}

fn reason(status: &str) -> &'static str {
    status
        .parse::<u16>()
        .ok()
        .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_declares_its_errors_as_problems() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for (status, r) in responses {
                    assert!(r["description"].as_str().is_some_and(|d| !d.is_empty()));
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            r["content"].get(PROBLEM_JSON).is_some(),
                            "{method} {path} {status}: {r}"
                        );
                    }
                }
                if path != "/healthz" {
                    assert!(responses.contains_key("429"), "{method} {path}");
                }
            }
        }
        let list = &doc["paths"]["/api/v1/tasks"]["get"]["parameters"];
        let limit = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 1000);
    }
}
