//! Loading a template: parse, validate against the known actions and the templating
//! language, and compile what every run needs (schemas, timeouts) once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use taskhook_actions::Registry;
use taskhook_model::validate::{
    Catalog, TemplateError, TemplateLimits, ValidationError, validate_template_with,
};
use taskhook_model::{Language, Template};

/// Validation's view of the actions and of MiniJinja.
pub struct ActionCatalog<'a> {
    pub actions: &'a Registry,
}

impl Catalog for ActionCatalog<'_> {
    fn check_action(&self, kind: &str, config: &Value) -> Result<(), (String, String)> {
        let Some(action) = self.actions.get(kind) else {
            let known: Vec<&str> = self.actions.names().collect();
            return Err((
                String::new(),
                format!(
                    "unknown action type {kind:?}; known types: {}",
                    known.join(", ")
                ),
            ));
        };
        action.validate(config).map_err(|e| (e.field, e.message))
    }

    fn template_references(&self, lang: Language, text: &str) -> Result<Vec<String>, String> {
        crate::render::references(lang, text).map_err(|e| e.message)
    }
}

/// A validated template with its per-step compiled parts.
pub struct CompiledTemplate {
    pub template: Template,
    /// The language of its strings, as validation found it.
    pub language: Language,
    /// Steps as they run: a step calling a function has the function's action, pre-hook,
    /// conditions and custom states folded in.
    pub steps: std::collections::BTreeMap<String, taskhook_model::Step>,
    /// For steps calling a function: their arguments (templated), exposed as `function_args`.
    pub function_args: HashMap<String, Value>,
    pub schemas: HashMap<String, jsonschema::Validator>,
    pub timeouts: HashMap<String, Duration>,
    /// Every secret the template reads (`{{ secret.NAME }}`), looked up at each round of a run.
    pub secrets: std::collections::BTreeSet<String>,
    /// The secrets each step reads (its action, pre-hook, conditions, foreach, arguments): a
    /// step whose secret is gone fails with a clear error instead of a templating one.
    pub step_secrets: HashMap<String, std::collections::BTreeSet<String>>,
}

/// Parses (YAML or JSON) and validates a template document within the default limits.
pub fn parse_and_validate(text: &str, actions: &Registry) -> Result<Template, TemplateError> {
    let limits = TemplateLimits::default();
    limits.check_document(text)?;
    let template = Template::parse(text).map_err(|e| TemplateError {
        errors: vec![ValidationError {
            field: "template".into(),
            message: e.message,
        }],
    })?;
    validate_template_with(&template, &ActionCatalog { actions }, &limits)?;
    Ok(template)
}

/// Validates a template within `limits` and compiles it. Templates read back from the store
/// are compiled with [`TemplateLimits::UNLIMITED`]: they were accepted once, and a lowered
/// limit must not strand their tasks.
pub fn compile(
    template: Template,
    actions: &Registry,
    limits: &TemplateLimits,
) -> Result<Arc<CompiledTemplate>, TemplateError> {
    let language = validate_template_with(&template, &ActionCatalog { actions }, limits)?;
    let mut schemas = HashMap::new();
    let mut timeouts = HashMap::new();
    let mut steps = std::collections::BTreeMap::new();
    let mut function_args = HashMap::new();
    for (name, step) in &template.steps {
        let mut effective = step.clone();
        if let Some(f) = template.function_of(step) {
            effective.action = f.action.clone();
            effective.pre_hook = step.pre_hook.clone().or_else(|| f.pre_hook.clone());
            effective.conditions = f
                .conditions
                .iter()
                .chain(&step.conditions)
                .cloned()
                .collect();
            effective.custom_states = template.custom_states_of(step).cloned().collect();
            function_args.insert(name.clone(), step.action.configuration.clone());
        }
        steps.insert(name.clone(), effective);
    }
    for (name, step) in &template.steps {
        if let Some(schema) = &step.json_schema
            && let Ok(v) = jsonschema::validator_for(schema)
        {
            schemas.insert(name.clone(), v);
        }
        if let Some(t) = &step.timeout
            && let Ok(d) = taskhook_model::duration::parse_duration_str(t)
        {
            timeouts.insert(name.clone(), d);
        }
    }
    let secrets = crate::secrets::template_secrets(&template)
        .into_keys()
        .collect();
    let mut step_secrets = HashMap::new();
    for (name, step) in &steps {
        let mut names = serde_json::to_value(step)
            .map(|v| crate::secrets::value_secrets(&v, language))
            .unwrap_or_default();
        if let Some(args) = function_args.get(name) {
            names.extend(crate::secrets::value_secrets(args, language));
        }
        if !names.is_empty() {
            step_secrets.insert(name.clone(), names);
        }
    }
    Ok(Arc::new(CompiledTemplate {
        template,
        language,
        steps,
        function_args,
        schemas,
        timeouts,
        secrets,
        step_secrets,
    }))
}
