//! Load-time validation of templates: every rule serde cannot express, each error
//! naming where it is (`steps.<name>.<field>`). Knowledge of actions and of the
//! templating language comes in through [`Catalog`], so this module stays pure.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::language::Language;
use crate::state::StepState;
use crate::template::{
    Action, DependencyStates, Function, FunctionChainError, MAX_FUNCTION_DEPTH, Step, Template,
};

/// One problem in a template, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `steps.fetch.dependencies[0]`.
    pub field: String,
    pub message: String,
}

/// All problems found in one template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct TemplateError {
    pub errors: Vec<ValidationError>,
}

/// What validation needs to know from the rest of the system.
pub trait Catalog {
    /// Checks that an action type exists and its (merged) configuration is valid.
    /// `Err((field inside configuration, message))`.
    fn check_action(&self, kind: &str, config: &Value) -> Result<(), (String, String)>;
    /// Parses a templated string in `lang`; returns the dotted variable paths it reads
    /// (e.g. `step.fetch.output.id`, `input.name`), or a syntax error.
    fn template_references(&self, lang: Language, text: &str) -> Result<Vec<String>, String>;
}

/// Longest `expression_timeout` of a variable.
pub const MAX_EXPRESSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Names of the root variables templates may read (in Go templates, as fields: `.input`).
pub(crate) const ROOTS: [&str; 10] = [
    "input",
    "resolver_input",
    "step",
    "task",
    "var",
    "iterator",
    "pre_hook",
    "function_args",
    "secret",
    "config",
];

/// Size limits a template must fit at intake (API, `--templates`, `template validate`).
/// Templates already stored are not checked again when their tasks run, so lowering a
/// limit never strands a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLimits {
    /// Largest template document (YAML or JSON text), in bytes.
    pub max_template_bytes: usize,
    /// Most steps in one template.
    pub max_steps: usize,
}

impl TemplateLimits {
    pub const DEFAULT_MAX_TEMPLATE_BYTES: usize = 256 * 1024;
    pub const DEFAULT_MAX_STEPS: usize = 500;

    /// No size limit: for templates already accepted.
    pub const UNLIMITED: TemplateLimits = TemplateLimits {
        max_template_bytes: usize::MAX,
        max_steps: usize::MAX,
    };

    /// Checks the size of a template document before it is parsed; the error names the
    /// field `template`.
    pub fn check_document(&self, text: &str) -> Result<(), TemplateError> {
        if text.len() > self.max_template_bytes {
            return Err(TemplateError {
                errors: vec![ValidationError {
                    field: "template".into(),
                    message: format!(
                        "the template document is {} bytes; the limit is {} bytes (server option --max-template-bytes)",
                        text.len(),
                        self.max_template_bytes
                    ),
                }],
            });
        }
        Ok(())
    }
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            max_template_bytes: Self::DEFAULT_MAX_TEMPLATE_BYTES,
            max_steps: Self::DEFAULT_MAX_STEPS,
        }
    }
}

struct Ctx<'a> {
    t: &'a Template,
    catalog: &'a dyn Catalog,
    errors: Vec<ValidationError>,
    /// The language templated strings are checked in; `None` while it is being found, when
    /// strings are only looked at ([`crate::language::detect`]) and recorded below.
    lang: Option<Language>,
    /// The first field that shows Go, and the first that shows MiniJinja.
    go_at: Option<String>,
    jinja_at: Option<String>,
    /// A template being put or validated, not one read back from the store: rules added
    /// since a template may have been stored apply only here, so that its tasks still run.
    intake: bool,
}

impl<'a> Ctx<'a> {
    fn new(t: &'a Template, catalog: &'a dyn Catalog, lang: Option<Language>) -> Self {
        Ctx {
            t,
            catalog,
            errors: Vec::new(),
            lang,
            go_at: None,
            jinja_at: None,
            intake: true,
        }
    }
}

/// The template's language: its `language`, or what its strings show (`checks` walks them
/// in detection mode). A template showing both is an error at `language`.
fn resolve_language(
    t: &Template,
    catalog: &dyn Catalog,
    checks: impl Fn(&mut Ctx<'_>),
) -> Result<Language, TemplateError> {
    if let Some(l) = t.language {
        return Ok(l);
    }
    let mut d = Ctx::new(t, catalog, None);
    checks(&mut d);
    match (d.go_at, d.jinja_at) {
        (Some(go), Some(jinja)) => Err(TemplateError {
            errors: vec![ValidationError {
                field: "language".into(),
                message: format!(
                    "the template mixes Go templates ({go}) and MiniJinja ({jinja}); write it in \
                     one language, or set `language: go` or `language: jinja`"
                ),
            }],
        }),
        (Some(_), None) => Ok(Language::Go),
        _ => Ok(Language::Jinja),
    }
}

impl Ctx<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The builtin states a condition's `then` may set (besides the target step's custom states).
pub const CONDITION_STATES: [&str; 6] = [
    "DONE",
    "PRUNE",
    "TO_RETRY",
    "RETRY_NOW",
    "FATAL_ERROR",
    "CLIENT_ERROR",
];

/// Longest template or library function name.
pub const MAX_NAME_LEN: usize = 128;

fn valid_name(s: &str, max: usize) -> bool {
    crate::name::is_valid(s, max)
}

/// Validates a template within the default [`TemplateLimits`]; returns every problem found,
/// not only the first.
pub fn validate_template(t: &Template, catalog: &dyn Catalog) -> Result<Language, TemplateError> {
    validate_template_with(t, catalog, &TemplateLimits::default())
}

/// Validates a template within `limits`; returns every problem found, not only the first,
/// or the language its strings are written in. A template with too many steps gets that
/// one error: its steps are not looked at.
pub fn validate_template_with(
    t: &Template,
    catalog: &dyn Catalog,
    limits: &TemplateLimits,
) -> Result<Language, TemplateError> {
    if t.steps.len() > limits.max_steps {
        return Err(TemplateError {
            errors: vec![ValidationError {
                field: "steps".into(),
                message: format!(
                    "the template has {} steps; the limit is {} (server option --max-steps)",
                    t.steps.len(),
                    limits.max_steps
                ),
            }],
        });
    }
    let lang = resolve_language(t, catalog, check_template)?;
    let mut cx = Ctx::new(t, catalog, Some(lang));
    cx.intake = *limits != TemplateLimits::UNLIMITED;
    check_template(&mut cx);
    if cx.errors.is_empty() {
        Ok(lang)
    } else {
        Err(TemplateError { errors: cx.errors })
    }
}

/// Every rule of a whole template.
fn check_template(cx: &mut Ctx<'_>) {
    let t = cx.t;
    if let Err(e) = crate::name::check(&t.name, MAX_NAME_LEN) {
        cx.err("name", e);
    }
    if t.steps.is_empty() {
        cx.err("steps", "a template needs at least one step");
    }
    if t.auto_runnable && !t.resolver_inputs.is_empty() {
        cx.err(
            "resolver_inputs",
            "cannot be used with auto_runnable: nobody resolves an auto-runnable task",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, input) in t.inputs.iter().enumerate() {
        if let Err(e) = input.check_spec() {
            cx.err(format!("inputs[{i}]"), e);
        }
        if !seen.insert(&input.name) {
            cx.err(
                format!("inputs[{i}].name"),
                format!("duplicate input {:?}", input.name),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, input) in t.resolver_inputs.iter().enumerate() {
        if let Err(e) = input.check_spec() {
            cx.err(format!("resolver_inputs[{i}]"), e);
        }
        if !seen.insert(&input.name) {
            cx.err(
                format!("resolver_inputs[{i}].name"),
                format!("duplicate input {:?}", input.name),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, var) in t.variables.iter().enumerate() {
        if !valid_name(&var.name, 128) || var.name.contains('.') {
            cx.err(
                format!("variables[{i}].name"),
                "use letters, digits, '_' and '-'",
            );
        }
        if !seen.insert(&var.name) {
            cx.err(
                format!("variables[{i}].name"),
                format!("duplicate variable {:?}", var.name),
            );
        }
        check_templates_in(cx, &format!("variables[{i}].value"), &var.value, None);
        match &var.expression {
            Some(_) if !var.value.is_null() => cx.err(
                format!("variables[{i}]"),
                "give a value or an expression, not both",
            ),
            Some(e) => check_template_text(cx, &format!("variables[{i}].expression"), e, None),
            None if var.expression_timeout.is_some() => cx.err(
                format!("variables[{i}].expression_timeout"),
                "only an expression takes a timeout",
            ),
            None => {}
        }
        if let Some(t) = &var.expression_timeout {
            match crate::duration::parse_duration_str(t) {
                Ok(d) if !d.is_zero() && d <= MAX_EXPRESSION_TIMEOUT => {}
                Ok(_) => cx.err(
                    format!("variables[{i}].expression_timeout"),
                    "must be more than 0 and at most 60s",
                ),
                Err(e) => cx.err(format!("variables[{i}].expression_timeout"), e),
            }
        }
    }
    if let Some(title) = &t.title_format {
        check_template_text(cx, "title_format", title, None);
    }
    if let Some(result) = &t.result_format {
        check_templates_in(cx, "result_format", result, None);
    }
    for (name, f) in &t.functions {
        check_function(cx, name, f);
    }
    for (name, step) in &t.steps {
        check_step(cx, name, step);
    }
    check_cycles(cx);
}

fn check_step(cx: &mut Ctx<'_>, name: &str, step: &Step) {
    let at = |f: &str| format!("steps.{name}.{f}");
    if name == "this" || !valid_name(name, 128) || name.contains('.') {
        cx.err(
            format!("steps.{name}"),
            "step names use letters, digits, '_' and '-', and 'this' is reserved",
        );
    }
    match cx.t.function_of(step) {
        Some(f) => check_function_call(cx, &at("action"), &step.action, f, name),
        None => check_action(cx, &at("action"), &step.action, Some(name)),
    }
    if let Some(pre) = &step.pre_hook {
        check_action(cx, &at("pre_hook"), pre, Some(name));
    }
    let mut customs = BTreeSet::new();
    for s in &step.custom_states {
        if StepState::is_builtin_name(s) || s == "ANY" {
            cx.err(at("custom_states"), format!("{s:?} is a builtin state"));
        } else if !customs.insert(s) {
            cx.err(at("custom_states"), format!("{s:?} is listed twice"));
        }
    }
    let mut dep_targets = BTreeSet::new();
    for (i, dep) in step.parsed_dependencies().iter().enumerate() {
        let f = at(&format!("dependencies[{i}]"));
        let Some(target) = cx.t.steps.get(&dep.step) else {
            cx.err(f, format!("unknown step {:?}", dep.step));
            continue;
        };
        if dep.step == name {
            cx.err(f, "a step cannot depend on itself");
            continue;
        }
        if !dep_targets.insert(dep.step.clone()) {
            cx.err(f.clone(), format!("{:?} is listed twice", dep.step));
        }
        if let DependencyStates::OneOf(states) = &dep.states {
            for s in states {
                let ok = s == "DONE" || cx.t.custom_states_of(target).any(|c| c == s);
                if !ok {
                    cx.err(
                        f.clone(),
                        format!(
                            "state {s:?} is neither DONE, ANY, nor a custom state of {:?}",
                            dep.step
                        ),
                    );
                }
            }
        }
    }
    for (i, cond) in step.conditions.iter().enumerate() {
        let f = at(&format!("conditions[{i}]"));
        if cond.foreach.is_some() {
            if cond.kind != crate::ConditionKind::Skip {
                cx.err(
                    format!("{f}.foreach"),
                    "only a skip condition says where it applies on a foreach step",
                );
            } else if step.foreach.is_none() {
                cx.err(
                    format!("{f}.foreach"),
                    "the step has no foreach: children and parent mean nothing here",
                );
            }
        }
        if cond.asserts.is_empty() {
            cx.err(
                format!("{f}.if"),
                "a condition needs at least one assertion",
            );
        }
        for (j, a) in cond.asserts.iter().enumerate() {
            check_template_text(cx, &format!("{f}.if[{j}].value"), &a.value, Some(name));
            check_template_text(
                cx,
                &format!("{f}.if[{j}].expected"),
                &a.expected,
                Some(name),
            );
            if matches!(
                a.operator,
                crate::Operator::Regexp | crate::Operator::Notregexp
            ) && !a.expected.contains("{{")
                && let Err(e) = regex::Regex::new(&a.expected)
            {
                cx.err(
                    format!("{f}.if[{j}].expected"),
                    format!("invalid regex: {e}"),
                );
            }
        }
        if cond.then.is_empty() {
            cx.err(
                format!("{f}.then"),
                "a condition must set at least one state",
            );
        }
        for (target, state) in &cond.then {
            let target_step = if target == "this" {
                Some(step)
            } else {
                cx.t.steps.get(target)
            };
            let Some(target_step) = target_step else {
                cx.err(format!("{f}.then"), format!("unknown step {target:?}"));
                continue;
            };
            if cx.intake
                && target != "this"
                && target != name
                && !depends_on(cx.t, name, target)
                && !depends_on(cx.t, target, name)
            {
                cx.err(
                    format!("{f}.then.{target}"),
                    format!(
                        "a condition of {name:?} may set the state of this step and of the steps it depends on or that depend on it, directly or not; {target:?} is neither"
                    ),
                );
                continue;
            }
            let allowed = CONDITION_STATES;
            if !allowed.contains(&state.as_str())
                && !cx.t.custom_states_of(target_step).any(|c| c == state)
            {
                cx.err(
                    format!("{f}.then.{target}"),
                    format!(
                        "state {state:?} is not one of {} nor a custom state of the step",
                        allowed.join(", ")
                    ),
                );
            }
        }
        if let Some(m) = &cond.message {
            check_template_text(cx, &format!("{f}.message"), m, Some(name));
        }
    }
    match (&step.foreach, &step.foreach_strategy) {
        (None, Some(_)) => cx.err(at("foreach_strategy"), "only allowed with foreach"),
        (Some(fe), _) => check_template_text(cx, &at("foreach"), fe, Some(name)),
        _ => {}
    }
    if let Some(schema) = &step.json_schema
        && let Err(e) = jsonschema::validator_for(schema)
    {
        cx.err(at("json_schema"), format!("invalid JSON Schema: {e}"));
    }
    if let Some(t) = &step.timeout {
        match crate::duration::parse_duration_str(t) {
            Ok(d) if d.is_zero() => cx.err(at("timeout"), "must be more than zero"),
            Ok(_) => {}
            Err(e) => cx.err(at("timeout"), e),
        }
    }
    for (i, r) in step.resources.iter().enumerate() {
        if !valid_name(r, 128) {
            cx.err(
                at(&format!("resources[{i}]")),
                "resource names use letters, digits, '_', '-' and '.'",
            );
        }
    }
}

fn check_action(cx: &mut Ctx<'_>, field: &str, action: &Action, step: Option<&str>) {
    let mut config = action.configuration.clone();
    if !config.is_object() {
        cx.err(format!("{field}.configuration"), "must be an object");
        return;
    }
    if let Some(base) = &action.base_configuration {
        match cx.t.base_configurations.get(base) {
            None => {
                cx.err(
                    format!("{field}.base_configuration"),
                    format!("unknown base configuration {base:?}"),
                );
                return;
            }
            Some(b) => config = merge_configuration(b, &config),
        }
    }
    if let Err((f, m)) = cx.catalog.check_action(&action.kind, &config) {
        let path = if f.is_empty() {
            format!("{field}.type")
        } else {
            format!("{field}.configuration.{f}")
        };
        let path = if m.starts_with("unknown action") {
            format!("{field}.type")
        } else {
            path
        };
        cx.err(path, m);
    }
    check_templates_in(cx, &format!("{field}.configuration"), &config, step);
    if let Some(out) = &action.output {
        check_templates_in(cx, &format!("{field}.output.format"), &out.format, step);
    }
}

/// Validates a library function document; `library` holds the functions it may call (the
/// functions they call, and so on); an entry named as `f` is replaced by `f`.
pub fn validate_function(
    f: &Function,
    library: &BTreeMap<String, Function>,
    catalog: &dyn Catalog,
) -> Result<(), TemplateError> {
    let mut holder = Template {
        name: "function".into(),
        functions: library.clone(),
        ..Template::default()
    };
    if !f.name.is_empty() {
        holder.functions.insert(f.name.clone(), f.clone());
    }
    let checks = |cx: &mut Ctx<'_>| {
        if f.name.is_empty() {
            cx.err("name", "a function needs a name");
        } else if !crate::name::is_valid_function(&f.name, MAX_NAME_LEN) {
            // Checked here too, under `name`: a library function is addressed by its name in URLs.
            cx.err("name", function_name_rule());
        } else {
            check_function(cx, &f.name.clone(), f);
        }
    };
    let lang = resolve_language(&holder, catalog, checks)?;
    let mut cx = Ctx::new(&holder, catalog, Some(lang));
    checks(&mut cx);
    if cx.errors.is_empty() {
        Ok(())
    } else {
        Err(TemplateError { errors: cx.errors })
    }
}

fn function_name_rule() -> String {
    format!(
        "function names are names joined by '::', each name: {}",
        crate::name::rule(MAX_NAME_LEN)
    )
}

/// Whether step `from` depends on step `on`, directly or through other steps.
fn depends_on(t: &Template, from: &str, on: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(s) = todo.pop() {
        let Some(step) = t.steps.get(&s) else {
            continue;
        };
        for d in step.parsed_dependencies() {
            if d.step == on {
                return true;
            }
            if seen.insert(d.step.clone()) {
                todo.push(d.step);
            }
        }
    }
    false
}

/// A function body: an action or a call of another function (no cycle, at most
/// [`MAX_FUNCTION_DEPTH`] deep), its pre-hook, conditions and states.
fn check_function(cx: &mut Ctx<'_>, name: &str, f: &Function) {
    let at = format!("functions.{name}");
    if !crate::name::is_valid_function(name, MAX_NAME_LEN) {
        cx.err(&at, function_name_rule());
    }
    if !f.name.is_empty() && f.name != name {
        cx.err(
            format!("{at}.name"),
            format!("the function is named {:?} but listed as {name:?}", f.name),
        );
    }
    let chain = match cx.t.function_chain(name) {
        Ok(chain) => chain,
        Err(FunctionChainError::Cycle(names)) => {
            cx.err(
                format!("{at}.action.type"),
                if names.first() == names.last() {
                    format!("function {name:?} calls itself: {}", names.join(" -> "))
                } else {
                    format!(
                        "function {name:?} calls functions that call each other in a cycle: {}",
                        names.join(" -> ")
                    )
                },
            );
            return;
        }
        Err(FunctionChainError::TooDeep(names)) => {
            cx.err(
                format!("{at}.action.type"),
                format!(
                    "function {name:?} calls functions more than {MAX_FUNCTION_DEPTH} deep: {}",
                    names.join(" -> ")
                ),
            );
            return;
        }
    };
    // A step runs one pre-hook: at most one function of a chain may bring it.
    if f.pre_hook.is_some()
        && let Some((other, _)) = chain.iter().skip(1).find(|(_, g)| g.pre_hook.is_some())
    {
        cx.err(
            format!("{at}.pre_hook"),
            format!(
                "function {name:?} calls function {other:?}, which has a pre_hook too; a step runs one pre_hook"
            ),
        );
    }
    for s in &f.custom_states {
        if StepState::is_builtin_name(s) || s == "ANY" {
            cx.err(
                format!("{at}.custom_states"),
                format!("{s:?} is a builtin state"),
            );
        }
    }
    // Some(""): a function body runs inside whichever step calls it, so `step.this` is defined.
    match cx.t.functions.get(&f.action.kind) {
        Some(called) => check_function_call(cx, &format!("{at}.action"), &f.action, called, ""),
        None => check_action(cx, &format!("{at}.action"), &f.action, Some("")),
    }
    if let Some(pre) = &f.pre_hook {
        check_action(cx, &format!("{at}.pre_hook"), pre, Some(""));
    }
}

/// The `function_args.X` a function reads: each must be given by the calling step.
fn function_args_read(cx: &Ctx<'_>, f: &Function) -> BTreeSet<String> {
    let mut texts = Vec::new();
    collect_strings(&f.action.configuration, &mut texts);
    if let Some(pre) = &f.pre_hook {
        collect_strings(&pre.configuration, &mut texts);
    }
    let mut out = BTreeSet::new();
    for t in texts {
        let lang = cx.lang.unwrap_or_default();
        for r in cx.catalog.template_references(lang, &t).unwrap_or_default() {
            if let Some(arg) = r.strip_prefix("function_args.") {
                out.insert(arg.split('.').next().unwrap_or(arg).to_string());
            }
        }
    }
    out
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(m) => m.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// A step (or a function) calling a function: its configuration holds the function's
/// arguments; its `output` shapes what the function gives, as on any action.
fn check_function_call(cx: &mut Ctx<'_>, field: &str, action: &Action, f: &Function, step: &str) {
    let Value::Object(args) = &action.configuration else {
        cx.err(
            format!("{field}.configuration"),
            "function arguments must be an object",
        );
        return;
    };
    if action.base_configuration.is_some() {
        cx.err(
            format!("{field}.base_configuration"),
            "a function call takes no base_configuration: its configuration holds the function's arguments",
        );
    }
    if let Some(out) = &action.output {
        check_templates_in(
            cx,
            &format!("{field}.output.format"),
            &out.format,
            Some(step),
        );
    }
    for arg in function_args_read(cx, f) {
        if !args.contains_key(&arg) {
            cx.err(
                format!("{field}.configuration"),
                format!("function {:?} needs argument {arg:?}", action.kind),
            );
        }
    }
    check_templates_in(
        cx,
        &format!("{field}.configuration"),
        &action.configuration,
        Some(step),
    );
}

/// `base` overlaid with `config`: objects merge key by key, anything else is replaced.
pub fn merge_configuration(base: &Value, config: &Value) -> Value {
    match (base, config) {
        (Value::Object(b), Value::Object(c)) => {
            let mut out = b.clone();
            for (k, v) in c {
                let merged = match out.get(k) {
                    Some(existing) => merge_configuration(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, c) => c.clone(),
    }
}

fn check_templates_in(cx: &mut Ctx<'_>, field: &str, v: &Value, step: Option<&str>) {
    match v {
        Value::String(s) => check_template_text(cx, field, s, step),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_templates_in(cx, &format!("{field}[{i}]"), item, step);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                check_templates_in(cx, &format!("{field}.{k}"), item, step);
            }
        }
        _ => {}
    }
}

/// Syntax and references: `step.X` must name a step, `input.X` a declared input, and so on.
fn check_template_text(cx: &mut Ctx<'_>, field: &str, text: &str, step: Option<&str>) {
    if !text.contains("{{") && !text.contains("{%") {
        return;
    }
    let Some(lang) = cx.lang else {
        match crate::language::detect(text) {
            Some(Language::Go) if cx.go_at.is_none() => cx.go_at = Some(field.to_string()),
            Some(Language::Jinja) if cx.jinja_at.is_none() => cx.jinja_at = Some(field.to_string()),
            _ => {}
        }
        return;
    };
    let refs = match cx.catalog.template_references(lang, text) {
        Ok(r) => r,
        Err(e) if lang == Language::Jinja && cx.t.language.is_none() => {
            cx.err(
                field,
                format!(
                    "templating error: {e} (if this is a µTask template, in Go's syntax, \
                     set `language: go`)"
                ),
            );
            return;
        }
        Err(e) => {
            cx.err(field, format!("templating error: {e}"));
            return;
        }
    };
    for r in refs {
        let parts: Vec<&str> = r.split('.').collect();
        let root = parts[0];
        let second = parts.get(1).copied();
        if !ROOTS.contains(&root) {
            // Names bound inside the template itself ({% set %}, loop variables) are fine;
            // minijinja only reports free variables, so anything else is a typo.
            cx.err(
                field,
                format!(
                    "unknown variable {root:?}; templates read {}",
                    ROOTS.join(", ")
                ),
            );
            continue;
        }
        if root == "secret" || root == "config" {
            check_secret_reference(cx, field, second);
            continue;
        }
        let Some(second) = second else { continue };
        match root {
            "step" if second != "this" && !cx.t.steps.contains_key(second) => {
                cx.err(field, format!("{r:?} refers to unknown step {second:?}"))
            }
            "step" if second == "this" && step.is_none() => {
                cx.err(field, "step.this is only defined inside a step")
            }
            "step" if cx.intake && second != "this" && step != Some(second) => {
                check_output_path(cx, field, lang, &r, &parts)
            }
            "input" if !cx.t.inputs.iter().any(|i| i.name == second) => cx.err(
                field,
                format!("{r:?} refers to undeclared input {second:?}"),
            ),
            "resolver_input" if !cx.t.resolver_inputs.iter().any(|i| i.name == second) => cx.err(
                field,
                format!("{r:?} refers to undeclared resolver input {second:?}"),
            ),
            "var" if !cx.t.variables.iter().any(|v| v.name == second) => cx.err(
                field,
                format!("{r:?} refers to undeclared variable {second:?}"),
            ),
            _ => {}
        }
    }
}

/// A path read below a step's output (`step.X.output.a.b`) must be one the step's
/// `json_schema` lets its output have (see [`crate::schema_path`]). Only at intake: stored
/// versions keep running. A foreach step's schema is its children's, so its own output is
/// not looked at; nor is a step's output read inside that step (`output.format` reads the
/// action's output, before the schema applies).
fn check_output_path(cx: &mut Ctx<'_>, field: &str, lang: Language, r: &str, parts: &[&str]) {
    let (Some(name), Some(&"output")) = (parts.get(1), parts.get(2)) else {
        return;
    };
    let Some(target) = cx.t.steps.get(*name) else {
        return;
    };
    let (Some(schema), None) = (&target.json_schema, &target.foreach) else {
        return;
    };
    let mut path = &parts[3..];
    // MiniJinja reads a map's methods as attributes: `output.items()` reads `items`.
    if lang == Language::Jinja
        && let Some((last, before)) = path.split_last()
        && matches!(*last, "items" | "keys" | "values" | "get")
    {
        path = before;
    }
    if let Err(refused) = crate::schema_path::check(schema, path) {
        let key = path[..=refused.at].join(".");
        let allowed = if refused.allowed.is_empty() {
            "no properties there".to_string()
        } else {
            format!("only {}", refused.allowed.join(", "))
        };
        cx.err(
            field,
            format!(
                "{r:?} reads {key:?} from the output of step {name:?}, which its json_schema does not allow ({allowed})"
            ),
        );
    }
}

/// A secret is read by its name (`{{ secret.NAME }}`), so that the secrets a template uses
/// are known when it is written; titles never read secrets (they are listed everywhere).
fn check_secret_reference(cx: &mut Ctx<'_>, field: &str, name: Option<&str>) {
    if field == "title_format" {
        cx.err(
            field,
            "secrets cannot be used in title_format: titles are shown in every task list",
        );
        return;
    }
    match name {
        None => cx.err(
            field,
            "read a secret by its name, as {{ secret.NAME }}; other uses of `secret` are not allowed",
        ),
        Some(n) => {
            if let Err(e) = crate::secret::check_name(n) {
                cx.err(field, e);
            }
        }
    }
}

/// Rejects dependency cycles, naming one step on each.
fn check_cycles(cx: &mut Ctx<'_>) {
    let graph: BTreeMap<&str, Vec<String>> =
        cx.t.steps
            .iter()
            .map(|(n, s)| {
                (
                    n.as_str(),
                    s.parsed_dependencies()
                        .into_iter()
                        .map(|d| d.step)
                        .collect(),
                )
            })
            .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = graph.keys().map(|k| (*k, Mark::New)).collect();
    let mut cycles = Vec::new();
    fn visit<'a>(
        n: &'a str,
        graph: &'a BTreeMap<&str, Vec<String>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        match marks.get(n) {
            Some(Mark::Done) | None => return,
            Some(Mark::Active) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cyc: Vec<&str> = path[start..].to_vec();
                cyc.push(n);
                cycles.push(cyc.join(" -> "));
                return;
            }
            Some(Mark::New) => {}
        }
        marks.insert(n, Mark::Active);
        path.push(n);
        for d in &graph[n] {
            if let Some((k, _)) = graph.get_key_value(d.as_str()) {
                visit(k, graph, marks, path, cycles);
            }
        }
        path.pop();
        marks.insert(n, Mark::Done);
    }
    for n in graph.keys() {
        visit(n, &graph, &mut marks, &mut Vec::new(), &mut cycles);
    }
    for c in cycles {
        let first = c.split(" -> ").next().unwrap_or_default().to_string();
        cx.err(
            format!("steps.{first}.dependencies"),
            format!("dependency cycle: {c}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog that knows `echo` (any config) and reads `{{ a.b.c }}` references by hand.
    struct TestCatalog;
    impl Catalog for TestCatalog {
        fn check_action(&self, kind: &str, config: &Value) -> Result<(), (String, String)> {
            match kind {
                "echo" => Ok(()),
                "http" if config.get("url").is_none() => {
                    Err(("url".into(), "missing field `url`".into()))
                }
                "http" => Ok(()),
                _ => Err((String::new(), format!("unknown action type {kind:?}"))),
            }
        }
        fn template_references(&self, _lang: Language, text: &str) -> Result<Vec<String>, String> {
            let mut out = Vec::new();
            let mut rest = text;
            while let Some(i) = rest.find("{{") {
                let end = rest[i..].find("}}").ok_or("unclosed {{")? + i;
                out.push(
                    rest[i + 2..end]
                        .trim()
                        .split(['|', ' '])
                        .next()
                        .unwrap()
                        .to_string(),
                );
                rest = &rest[end + 2..];
            }
            Ok(out)
        }
    }

    fn errors(yaml: &str) -> Vec<String> {
        let t = Template::parse(yaml).unwrap();
        match validate_template(&t, &TestCatalog) {
            Ok(_) => vec![],
            Err(e) => e
                .errors
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect(),
        }
    }

    #[test]
    fn a_good_template_passes() {
        let y = r#"
name: hello
inputs: [{name: who}]
variables: [{name: greeting, value: "hello {{ input.who }}"}]
steps:
  a:
    action: {type: echo, configuration: {output: "{{ var.greeting }}"}}
  b:
    dependencies: ["a"]
    custom_states: [SKIPPED]
    action: {type: http, configuration: {url: "http://x/{{ step.a.output }}"}}
  c:
    dependencies: ["b:SKIPPED,DONE", "a:ANY"]
    conditions:
      - type: skip
        if: [{value: "{{ step.b.output.x }}", operator: REGEXP, expected: "^a"}]
        then: {this: PRUNE}
    action: {type: echo}
"#;
        assert_eq!(errors(y), Vec::<String>::new());
    }

    #[test]
    fn secrets_are_read_by_name_and_never_in_titles() {
        let ok = r#"
name: s
steps:
  a:
    action: {type: echo, configuration: {output: "{{ secret.db_password }}"}}
"#;
        assert_eq!(errors(ok), Vec::<String>::new());
        let bad = r#"
name: s
title_format: "t {{ secret.db }}"
steps:
  a:
    action: {type: echo, configuration: {output: "{{ secret }}"}}
  b:
    action: {type: echo, configuration: {output: "{{ secret.no-way }}"}}
"#;
        let e = errors(bad);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("title_format: secrets cannot be used"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("steps.a.action.configuration.output: read a secret by its name"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("steps.b.action.configuration.output: invalid secret name"),
            "{e:?}"
        );
    }

    fn steps_yaml(n: usize) -> String {
        let mut y = String::from("name: many\nsteps:\n");
        for i in 0..n {
            y.push_str(&format!("  s{i}: {{action: {{type: echo}}}}\n"));
        }
        y
    }

    #[test]
    fn the_step_limit_is_configurable_and_names_steps() {
        let limits = TemplateLimits {
            max_steps: 3,
            ..TemplateLimits::default()
        };
        let ok = Template::parse(&steps_yaml(3)).unwrap();
        assert_eq!(
            validate_template_with(&ok, &TestCatalog, &limits),
            Ok(Language::Jinja)
        );
        let many = Template::parse(&steps_yaml(4)).unwrap();
        let e = validate_template_with(&many, &TestCatalog, &limits).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].field, "steps");
        assert!(
            e.errors[0].message.contains("4 steps; the limit is 3"),
            "{e}"
        );
        // The default is 500 steps.
        let t = Template::parse(&steps_yaml(501)).unwrap();
        assert_eq!(
            validate_template(&t, &TestCatalog).unwrap_err().errors[0].field,
            "steps"
        );
        let t = Template::parse(&steps_yaml(500)).unwrap();
        assert_eq!(validate_template(&t, &TestCatalog), Ok(Language::Jinja));
        let t = Template::parse(&steps_yaml(501)).unwrap();
        assert_eq!(
            validate_template_with(&t, &TestCatalog, &TemplateLimits::UNLIMITED),
            Ok(Language::Jinja)
        );
    }

    #[test]
    fn a_condition_setting_a_step_off_its_chain_is_refused_at_intake_only() {
        let t = Template::parse(
            "name: t\nsteps:\n  a:\n    action: {type: echo}\n    conditions: [{type: check, if: [{value: x, operator: EQ, expected: x}], then: {b: PRUNE}}]\n  b:\n    action: {type: echo}\n",
        )
        .unwrap();
        let fields: Vec<String> = validate_template(&t, &TestCatalog)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["steps.a.conditions[0].then.b"]);
        // Stored before the rule: its tasks still run.
        assert_eq!(
            validate_template_with(&t, &TestCatalog, &TemplateLimits::UNLIMITED),
            Ok(Language::Jinja)
        );
    }

    #[test]
    fn the_document_limit_names_template() {
        let limits = TemplateLimits {
            max_template_bytes: 10,
            ..TemplateLimits::default()
        };
        assert_eq!(limits.check_document("0123456789"), Ok(()));
        let e = limits.check_document("0123456789a").unwrap_err();
        assert_eq!(e.errors[0].field, "template");
        assert!(
            e.errors[0]
                .message
                .contains("11 bytes; the limit is 10 bytes"),
            "{e}"
        );
        assert_eq!(TemplateLimits::default().max_template_bytes, 256 * 1024);
    }

    #[test]
    fn each_error_names_its_step_and_field() {
        let y = r#"
name: bad name!
steps:
  a:
    dependencies: [nope, "b:WEIRD"]
    custom_states: [DONE]
    action: {type: teleport}
  b:
    foreach_strategy: sequence
    timeout: 10 parsecs
    json_schema: {type: 12}
    action: {type: http, configuration: {}}
    conditions:
      - type: check
        if: [{value: "{{ step.zzz.output }}", operator: REGEXP, expected: "("}]
        then: {this: RUNNING}
  c:
    action: {type: echo, configuration: {output: "{{ input.missing }} {{ nonsense }}"}}
"#;
        let got = errors(y);
        let expect = [
            "name: must be",
            "steps.a.action.type: unknown action type \"teleport\"",
            "steps.a.custom_states: \"DONE\" is a builtin state",
            "steps.a.dependencies[0]: unknown step \"nope\"",
            "steps.a.dependencies[1]: state \"WEIRD\" is neither DONE",
            "steps.b.action.configuration.url: missing field `url`",
            "steps.b.conditions[0].if[0].value: \"step.zzz.output\" refers to unknown step \"zzz\"",
            "steps.b.conditions[0].if[0].expected: invalid regex",
            "steps.b.conditions[0].then.this: state \"RUNNING\"",
            "steps.b.foreach_strategy: only allowed with foreach",
            "steps.b.json_schema: invalid JSON Schema",
            "steps.b.timeout: invalid duration",
            "steps.c.action.configuration.output: \"input.missing\" refers to undeclared input",
            "steps.c.action.configuration.output: unknown variable \"nonsense\"",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
    }

    #[test]
    fn functions_are_checked_and_their_arguments_required() {
        let y = r#"
name: fn
functions:
  notify:
    custom_states: [NOTIFIED]
    action: {type: http, configuration: {url: "http://x/{{ function_args.channel }}/{{ function_args.text }}"}}
  bad:
    action: {type: notify}
steps:
  a: {action: {type: notify, configuration: {channel: ops, text: hi}}}
  b: {action: {type: notify, configuration: {channel: ops}}}
  c: {dependencies: ["a:NOTIFIED"], action: {type: echo}}
"#;
        assert_eq!(
            errors(y),
            vec![
                "functions.bad.action.configuration: function \"notify\" needs argument \"channel\""
                    .to_string(),
                "functions.bad.action.configuration: function \"notify\" needs argument \"text\""
                    .to_string(),
                "steps.b.action.configuration: function \"notify\" needs argument \"text\""
                    .to_string(),
            ]
        );
    }

    #[test]
    fn functions_call_functions_with_their_arguments_and_states() {
        let y = r#"
name: nest
functions:
  inner:
    custom_states: [INNER_DONE]
    action: {type: echo, configuration: {output: "{{ function_args.text }}"}}
  outer:
    custom_states: [OUTER_DONE]
    action:
      type: inner
      configuration: {text: "{{ function_args.who }}!"}
      output: {strategy: merge, format: {by: "{{ function_args.who }}"}}
  forgetful:
    action: {type: inner, configuration: {nope: 1}}
  based:
    action: {type: inner, base_configuration: api, configuration: {text: x}}
steps:
  a: {action: {type: outer, configuration: {who: ada}, output: {strategy: template, format: "{{ step.this.output }}"}}}
  b: {dependencies: ["a:INNER_DONE"], action: {type: echo}}
  c: {dependencies: ["a:OUTER_DONE"], action: {type: echo}}
  d: {action: {type: outer, configuration: {}}}
"#;
        assert_eq!(
            errors(y),
            vec![
                "functions.based.action.base_configuration: a function call takes no base_configuration: its configuration holds the function's arguments".to_string(),
                "functions.forgetful.action.configuration: function \"inner\" needs argument \"text\""
                    .to_string(),
                "steps.d.action.configuration: function \"outer\" needs argument \"who\""
                    .to_string(),
            ]
        );
    }

    #[test]
    fn functions_calling_themselves_or_too_deep_are_refused_by_name() {
        let y = r#"
name: cycles
functions:
  ping: {action: {type: pong}}
  pong: {action: {type: ping}}
  loop: {action: {type: loop}}
  lead: {action: {type: ping}}
steps:
  a: {action: {type: lead}}
  b: {action: {type: loop}}
"#;
        assert_eq!(
            errors(y),
            vec![
                "functions.lead.action.type: function \"lead\" calls functions that call each other in a cycle: lead -> ping -> pong -> ping".to_string(),
                "functions.loop.action.type: function \"loop\" calls itself: loop -> loop".to_string(),
                "functions.ping.action.type: function \"ping\" calls itself: ping -> pong -> ping".to_string(),
                "functions.pong.action.type: function \"pong\" calls itself: pong -> ping -> pong".to_string(),
            ]
        );
        // Eleven functions deep is one too many; ten is fine.
        let mut y = String::from("name: deep\nfunctions:\n");
        for i in 0..11 {
            let next = if i == 10 {
                "echo".to_string()
            } else {
                format!("f{}", i + 1)
            };
            y.push_str(&format!("  f{i}: {{action: {{type: {next}}}}}\n"));
        }
        y.push_str("steps:\n  a: {action: {type: f1}}\n");
        let got = errors(&y);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("functions.f0.action.type: function \"f0\" calls functions more than 10 deep: f0 -> f1"),
            "{got:?}"
        );
    }

    #[test]
    fn one_pre_hook_per_chain_of_functions() {
        let y = r#"
name: hooks
functions:
  inner:
    pre_hook: {type: echo, configuration: {output: 1}}
    action: {type: echo}
  outer:
    pre_hook: {type: echo, configuration: {output: 2}}
    action: {type: inner}
steps:
  a: {action: {type: outer}}
"#;
        assert_eq!(
            errors(y),
            vec![
                "functions.outer.pre_hook: function \"outer\" calls function \"inner\", which has a pre_hook too; a step runs one pre_hook".to_string(),
            ]
        );
    }

    #[test]
    fn a_library_function_may_call_the_library() {
        let library: BTreeMap<String, Function> = [(
            "inner".to_string(),
            Function::parse("name: inner\naction: {type: echo, configuration: {output: '{{ function_args.x }}'}}\n").unwrap(),
        )]
        .into();
        let outer =
            Function::parse("name: outer\naction: {type: inner, configuration: {x: 1}}\n").unwrap();
        assert_eq!(validate_function(&outer, &library, &TestCatalog), Ok(()));
        let e = validate_function(&outer, &BTreeMap::new(), &TestCatalog).unwrap_err();
        assert_eq!(e.errors[0].field, "functions.outer.action.type", "{e}");
        // Replacing a library function by one calling its caller makes a cycle.
        let mut library = library;
        library.insert("outer".into(), outer);
        let inner = Function::parse("name: inner\naction: {type: outer}\n").unwrap();
        let e = validate_function(&inner, &library, &TestCatalog).unwrap_err();
        assert!(e.to_string().contains("inner -> outer -> inner"), "{e}");
    }

    #[test]
    fn output_paths_are_checked_against_the_json_schema_at_intake_only() {
        let y = r##"
name: lint
steps:
  one:
    json_schema:
      type: object
      definitions: {foo: {type: object, properties: {bar: {type: string}}}}
      properties: {value: {type: string}, foo: {$ref: "#/definitions/foo"}}
    action:
      type: echo
      configuration: {output: {value: x}}
      output: {strategy: merge, format: {foo: "{{ step.one.output.anything }}"}}
  two:
    action: {type: echo, configuration: {output: "{{ step.one.output.foo.bar }} {{ step.one.output.value }} {{ step.one.output }}"}}
  three:
    conditions:
      - type: skip
        if: [{value: "{{ step.one.output.notfound }}", operator: EQ, expected: x}]
        then: {this: PRUNE}
    action: {type: echo, configuration: {output: "{{ step.one.output.foo.baz }}"}}
  four:
    foreach: "{{ step.one.output.value }}"
    json_schema: {type: object, properties: {a: {}}}
    action: {type: echo}
  five:
    action: {type: echo, configuration: {output: "{{ step.four.output.b }} {{ step.one.output.foo.items }}"}}
"##;
        assert_eq!(
            errors(y),
            vec![
                "steps.three.action.configuration.output: \"step.one.output.foo.baz\" reads \"foo.baz\" from the output of step \"one\", which its json_schema does not allow (only bar)".to_string(),
                "steps.three.conditions[0].if[0].value: \"step.one.output.notfound\" reads \"notfound\" from the output of step \"one\", which its json_schema does not allow (only foo, value)".to_string(),
            ]
        );
        let t = Template::parse(y).unwrap();
        assert_eq!(
            validate_template_with(&t, &TestCatalog, &TemplateLimits::UNLIMITED),
            Ok(Language::Jinja)
        );
    }

    #[test]
    fn cycles_are_found() {
        let y = r#"
name: cyc
steps:
  a: {dependencies: [c], action: {type: echo}}
  b: {dependencies: [a], action: {type: echo}}
  c: {dependencies: [b], action: {type: echo}}
  d: {action: {type: echo}}
"#;
        let got = errors(y);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("dependency cycle: a -> c -> b -> a"),
            "{got:?}"
        );
    }

    #[test]
    fn base_configuration_merges_and_must_exist() {
        let y = r#"
name: base
base_configurations:
  api: {url: "http://x"}
steps:
  a: {action: {type: http, base_configuration: api, configuration: {method: POST}}}
  b: {action: {type: http, base_configuration: nope}}
"#;
        assert_eq!(
            errors(y),
            vec![
                "steps.b.action.base_configuration: unknown base configuration \"nope\""
                    .to_string()
            ]
        );
    }
}

#[cfg(test)]
mod never_panics {
    use proptest::prelude::*;

    use super::*;

    struct AnyCatalog;
    impl Catalog for AnyCatalog {
        fn check_action(&self, kind: &str, _config: &Value) -> Result<(), (String, String)> {
            if kind == "echo" {
                Ok(())
            } else {
                Err((String::new(), format!("unknown action type {kind:?}")))
            }
        }
        fn template_references(&self, _lang: Language, text: &str) -> Result<Vec<String>, String> {
            Ok(text
                .split("{{")
                .skip(1)
                .filter_map(|t| t.split("}}").next())
                .map(|t| t.trim().to_string())
                .collect())
        }
    }

    /// Template-shaped YAML built from fragments, so that parsing often succeeds and
    /// validation gets exercised on odd combinations.
    fn template_yaml() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec!["a", "b", "c", "this", "a.b", ""]);
        let dep = prop::sample::select(vec!["a", "b", "c", "a:ANY", "b:DONE,X", "zz", "a:", ":"]);
        let expr = prop::sample::select(vec![
            "{{ step.a.output }}",
            "{{ input.x }}",
            "{{ ",
            "}}",
            "plain",
            "{{ step.this.attempts }}",
        ]);
        prop::collection::vec((name, prop::collection::vec(dep, 0..3), expr, any::<bool>()), 0..5).prop_map(|steps| {
            let mut y = String::from("name: t\ninputs: [{name: x, regex: '[a-z]+'}]\nsteps:\n");
            for (name, deps, expr, foreach) in steps {
                y.push_str(&format!("  '{name}':\n    dependencies: {deps:?}\n"));
                if foreach {
                    y.push_str(&format!("    foreach: '{expr}'\n    foreach_strategy: sequence\n"));
                }
                y.push_str(&format!(
                    "    conditions: [{{type: skip, if: [{{value: '{expr}', operator: REGEXP, expected: '{expr}'}}], then: {{this: PRUNE}}}}]\n"
                ));
                y.push_str(&format!("    action: {{type: echo, configuration: {{output: '{expr}'}}}}\n"));
            }
            y
        })
    }

    proptest! {
        #[test]
        fn parsing_and_validating_any_text_never_panics(text in "\\PC{0,300}") {
            if let Ok(t) = Template::parse(&text) {
                let _ = validate_template(&t, &AnyCatalog);
            }
        }

        #[test]
        fn validating_odd_templates_never_panics(y in template_yaml()) {
            if let Ok(t) = Template::parse(&y) {
                let _ = validate_template(&t, &AnyCatalog);
            }
        }
    }
}
