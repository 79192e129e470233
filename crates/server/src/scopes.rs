//! The route table: for every route of the API, the scope a caller must hold. It is the
//! single source of scopes: the authorization middleware ([`crate::identity::authorize`])
//! looks every request up in it, the published table (`docs/scopes.md`) is generated from it,
//! and the authorization matrix test walks it. A route missing from the table is refused
//! (403) to everyone, admin included.
//!
//! Placeholders in a scope are filled in per request:
//! - `{name}`, `{group}`, `{id}`: the path parameter of that name;
//! - `{template}` (task routes): the template of the task named by the path's `{id}`;
//! - `{template}` on a route without `{id}` (µTask's `POST /utask/resolution`): the template
//!   of the task the JSON body's `task_id` names;
//! - `{body.<field>}` (task creation): that text field of the JSON body (`template`, or µTask's
//!   `template_name`).

/// How a route authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No authentication (health, the OpenAPI document).
    Public,
    /// The route checks its own credential (a hook's secret token or webhook signature),
    /// never a bearer token.
    OwnCredential(&'static str),
    /// A bearer token (or a trusted proxy's user) holding `scope`.
    Scope,
    /// A listing: any authenticated caller, and the answer holds only the items whose
    /// `scope` the caller holds.
    Filtered,
    /// Any authenticated caller, whatever its scopes (µTask's `GET /utask/meta`: who am I).
    Authenticated,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteScope {
    /// HTTP method, or `ANY`.
    pub method: &'static str,
    /// The path pattern as the router spells it.
    pub path: &'static str,
    pub access: Access,
    /// The scope pattern (see the module documentation); empty for `Public` and
    /// `OwnCredential` rows.
    pub scope: &'static str,
}

const fn row(method: &'static str, path: &'static str, scope: &'static str) -> RouteScope {
    RouteScope {
        method,
        path,
        access: Access::Scope,
        scope,
    }
}

const fn filtered(method: &'static str, path: &'static str, scope: &'static str) -> RouteScope {
    RouteScope {
        access: Access::Filtered,
        ..row(method, path, scope)
    }
}

const fn public(method: &'static str, path: &'static str) -> RouteScope {
    RouteScope {
        access: Access::Public,
        ..row(method, path, "")
    }
}

const fn authenticated(method: &'static str, path: &'static str) -> RouteScope {
    RouteScope {
        access: Access::Authenticated,
        ..row(method, path, "")
    }
}

const fn own(method: &'static str, path: &'static str, credential: &'static str) -> RouteScope {
    RouteScope {
        access: Access::OwnCredential(credential),
        ..row(method, path, "")
    }
}

/// Every route of the API and what it requires.
pub const ROUTES: &[RouteScope] = &[
    public("GET", "/healthz"),
    public("GET", "/api/openapi.json"),
    // templates
    filtered("GET", "/api/v1/templates", "templates:read:{name}"),
    row("POST", "/api/v1/templates/validate", "templates:validate"),
    row("GET", "/api/v1/templates/{name}", "templates:read:{name}"),
    row("PUT", "/api/v1/templates/{name}", "templates:write:{name}"),
    row(
        "DELETE",
        "/api/v1/templates/{name}",
        "templates:write:{name}",
    ),
    // library functions
    filtered("GET", "/api/v1/functions", "functions:read:{name}"),
    row("GET", "/api/v1/functions/{name}", "functions:read:{name}"),
    row("PUT", "/api/v1/functions/{name}", "functions:write:{name}"),
    row(
        "DELETE",
        "/api/v1/functions/{name}",
        "functions:write:{name}",
    ),
    // tasks
    filtered("GET", "/api/v1/tasks", "tasks:read:{template}"),
    row("POST", "/api/v1/tasks", "tasks:create:{body.template}"),
    row("GET", "/api/v1/tasks/{id}", "tasks:read:{template}"),
    row("GET", "/api/v1/tasks/{id}/events", "tasks:read:{template}"),
    row(
        "POST",
        "/api/v1/tasks/{id}/resolve",
        "tasks:resolve:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/retry",
        "tasks:resolve:{template}",
    ),
    // each task is authorized as its own retry is
    filtered("POST", "/api/v1/tasks/retry", "tasks:resolve:{template}"),
    row(
        "PUT",
        "/api/v1/tasks/{id}/steps/{step}/state",
        "tasks:resolve:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/extend",
        "tasks:resolve:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/rerun",
        "tasks:resolve:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/wontfix",
        "tasks:resolve:{template}",
    ),
    row(
        "GET",
        "/api/v1/tasks/{id}/comments",
        "tasks:read:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/comments",
        "tasks:comment:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/cancel",
        "tasks:cancel:{template}",
    ),
    row(
        "POST",
        "/api/v1/tasks/{id}/pause",
        "tasks:cancel:{template}",
    ),
    // hooks
    filtered("GET", "/api/v1/hooks", "hooks:read:{group}/{id}"),
    filtered("GET", "/api/v1/hooks/{group}", "hooks:read:{group}/{id}"),
    row(
        "GET",
        "/api/v1/hooks/{group}/{id}",
        "hooks:read:{group}/{id}",
    ),
    row(
        "PUT",
        "/api/v1/hooks/{group}/{id}",
        "hooks:write:{group}/{id}",
    ),
    row(
        "DELETE",
        "/api/v1/hooks/{group}/{id}",
        "hooks:write:{group}/{id}",
    ),
    row(
        "GET",
        "/api/v1/hooks/{group}/{id}/status",
        "hooks:read:{group}/{id}",
    ),
    row(
        "GET",
        "/api/v1/hooks/{group}/{id}/fires",
        "hooks:read:{group}/{id}",
    ),
    row(
        "POST",
        "/api/v1/hooks/{group}/{id}/test",
        "hooks:read:{group}/{id}",
    ),
    row(
        "GET",
        "/api/v1/hooks/{group}/{id}/token",
        "hooks:token:{group}/{id}",
    ),
    row(
        "POST",
        "/api/v1/hooks/{group}/{id}/token",
        "hooks:token:{group}/{id}",
    ),
    row(
        "POST",
        "/api/v1/hooks/{group}/{id}/trigger",
        "hooks:trigger:{group}/{id}",
    ),
    own(
        "ANY",
        "/api/v1/hooks/{group}/{id}/trigger/{token}",
        "the hook's secret token",
    ),
    own(
        "POST",
        "/api/v1/hooks/{group}/{id}/webhook",
        "the provider's signature",
    ),
    // API tokens
    row("GET", "/api/v1/tokens", "tokens:manage"),
    row("POST", "/api/v1/tokens", "tokens:manage"),
    row("DELETE", "/api/v1/tokens/{id}", "tokens:manage"),
    // maintenance
    row("GET", "/api/v1/maintenance", "maintenance"),
    row("PUT", "/api/v1/maintenance", "maintenance"),
    // secrets, the audit log, encryption keys
    row("GET", "/api/v1/secrets", "secrets:read:*"),
    row("GET", "/api/v1/secrets/{name}", "secrets:read:{name}"),
    row("PUT", "/api/v1/secrets/{name}", "secrets:write:{name}"),
    row("DELETE", "/api/v1/secrets/{name}", "secrets:write:{name}"),
    row("GET", "/api/v1/audit", "audit:read"),
    row("GET", "/api/v1/keys", "admin"),
    row("POST", "/api/v1/keys/rotate", "admin"),
    // µTask's API (`utask_api.rs`): each route as its taskhook equivalent
    filtered("GET", "/utask/template", "templates:read:{name}"),
    row("GET", "/utask/template/{name}", "templates:read:{name}"),
    filtered("GET", "/utask/task", "tasks:read:{template}"),
    row("POST", "/utask/task", "tasks:create:{body.template_name}"),
    row("GET", "/utask/task/{id}", "tasks:read:{template}"),
    // edited as resolved: by its resolvers (µTask: the template's), or its requester while TODO
    row("PUT", "/utask/task/{id}", "tasks:resolve:{template}"),
    // no taskhook equivalent: admin only, as in µTask
    row("DELETE", "/utask/task/{id}", "admin"),
    row(
        "POST",
        "/utask/task/{id}/wontfix",
        "tasks:resolve:{template}",
    ),
    row("GET", "/utask/task/{id}/comment", "tasks:read:{template}"),
    row(
        "POST",
        "/utask/task/{id}/comment",
        "tasks:comment:{template}",
    ),
    row(
        "GET",
        "/utask/task/{id}/comment/{commentid}",
        "tasks:read:{template}",
    ),
    // the task is the body's task_id
    row("POST", "/utask/resolution", "tasks:resolve:{template}"),
    row("GET", "/utask/resolution/{id}", "tasks:read:{template}"),
    row(
        "POST",
        "/utask/resolution/{id}/run",
        "tasks:resolve:{template}",
    ),
    row(
        "POST",
        "/utask/resolution/{id}/pause",
        "tasks:cancel:{template}",
    ),
    row(
        "POST",
        "/utask/resolution/{id}/cancel",
        "tasks:cancel:{template}",
    ),
    row(
        "POST",
        "/utask/resolution/{id}/extend",
        "tasks:resolve:{template}",
    ),
    row(
        "GET",
        "/utask/resolution/{id}/step/{step}",
        "tasks:read:{template}",
    ),
    row(
        "PUT",
        "/utask/resolution/{id}/step/{step}",
        "tasks:resolve:{template}",
    ),
    row(
        "PUT",
        "/utask/resolution/{id}/step/{step}/state",
        "tasks:resolve:{template}",
    ),
    public("GET", "/utask/unsecured/mon/ping"),
    public("GET", "/utask/unsecured/stats"),
    authenticated("GET", "/utask/meta"),
];

/// The row for a matched route pattern and method.
pub fn lookup(method: &str, path: &str) -> Option<&'static RouteScope> {
    ROUTES
        .iter()
        .find(|r| r.path == path && (r.method == method || r.method == "ANY"))
        .or_else(|| {
            // HEAD is answered by the GET route.
            (method == "HEAD")
                .then(|| ROUTES.iter().find(|r| r.path == path && r.method == "GET"))
                .flatten()
        })
}

/// The methods the table has for `path`, as an `Allow` header lists them (GET brings HEAD);
/// empty when the path has no row.
pub fn methods_of(path: &str) -> Vec<&'static str> {
    let mut methods: Vec<&'static str> = ROUTES
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods
}

/// Fills a scope pattern's placeholders with `value(name)`; `None` when one has no value.
pub fn fill(pattern: &str, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        out.push_str(&value(&rest[start + 1..end])?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The route table as a Markdown table (the body of `docs/scopes.md`).
pub fn markdown() -> String {
    let mut out = String::from("| method | path | required |\n| --- | --- | --- |\n");
    for r in ROUTES {
        let required = match r.access {
            Access::Public => "nothing (public)".to_string(),
            Access::OwnCredential(c) => format!("{c} (no bearer token)"),
            Access::Scope => format!("`{}`", r.scope),
            Access::Filtered => format!("any caller; lists only items with `{}`", r.scope),
            Access::Authenticated => "any authenticated caller".to_string(),
        };
        out.push_str(&format!("| {} | `{}` | {} |\n", r.method, r.path, required));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_every_placeholder() {
        let v = |k: &str| match k {
            "group" => Some("g".to_string()),
            "id" => Some("h".to_string()),
            _ => None,
        };
        assert_eq!(
            fill("hooks:read:{group}/{id}", v).as_deref(),
            Some("hooks:read:g/h")
        );
        assert_eq!(fill("tokens:manage", v).as_deref(), Some("tokens:manage"));
        assert_eq!(fill("tasks:read:{template}", v), None);
    }

    #[test]
    fn every_scope_row_names_a_scope_and_rows_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            match r.access {
                Access::Scope | Access::Filtered => assert!(!r.scope.is_empty()),
                Access::Authenticated => assert!(r.scope.is_empty()),
                _ => assert!(r.scope.is_empty()),
            }
        }
        assert_eq!(lookup("HEAD", "/healthz").unwrap().method, "GET");
        assert!(lookup("GET", "/nope").is_none());
    }

    /// The published table is the table the server enforces.
    #[test]
    fn the_published_table_is_current() {
        let doc = include_str!("../../../docs/scopes.md");
        assert!(
            doc.contains(&markdown()),
            "docs/scopes.md is out of date; paste this table into it:\n{}",
            markdown()
        );
    }
}
