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
use taskhook_model::{Action, Language, OutputSpec, Step, Template};

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
    /// For steps calling a function (perhaps through other functions): what each part of
    /// the step reads as `function_args`.
    pub calls: HashMap<String, FunctionCall>,
    pub schemas: HashMap<String, jsonschema::Validator>,
    pub timeouts: HashMap<String, Duration>,
    /// Every secret the template reads (`{{ secret.NAME }}`), looked up at each round of a run.
    pub secrets: std::collections::BTreeSet<String>,
    /// The secrets each step reads (its action, pre-hook, conditions, foreach, arguments): a
    /// step whose secret is gone fails with a clear error instead of a templating one.
    pub step_secrets: HashMap<String, std::collections::BTreeSet<String>>,
}

/// A step calling a function `f1`, whose action may call `f2`, and so on down to an action.
/// `f1` reads the step's configuration as its arguments (`function_args`); `f2` reads `f1`'s
/// action configuration, rendered with `f1`'s arguments; and so on. Each function's pre-hook,
/// conditions and output read its own arguments; the step's own, `f1`'s.
pub struct FunctionCall {
    /// The functions, outermost first.
    pub names: Vec<String>,
    /// The templated arguments of each function: the step's configuration, then each
    /// function's action configuration but the last one's (the action's own).
    pub args: Vec<Value>,
    /// For each condition of the step as it runs (the innermost function's first, the
    /// step's own last): the index of the arguments it reads.
    pub condition_args: Vec<usize>,
    /// The output shapes, applied one after another: the innermost function's action's
    /// first, the step's own last; each with the index of the arguments it reads.
    pub outputs: Vec<(OutputSpec, usize)>,
    /// The index of the arguments the pre-hook reads.
    pub pre_hook_args: usize,
}

impl FunctionCall {
    /// Resolves a step's function chain; `None` when its action is not a function.
    fn of(template: &Template, step: &Step) -> Option<(FunctionCall, Step)> {
        let chain = template.functions_called(&step.action.kind);
        let innermost = *chain.last()?;
        let names: Vec<String> = std::iter::once(step.action.kind.clone())
            .chain(chain.iter().map(|f| f.action.kind.clone()))
            .take(chain.len())
            .collect();
        let mut args = vec![step.action.configuration.clone()];
        args.extend(
            chain[..chain.len() - 1]
                .iter()
                .map(|f| f.action.configuration.clone()),
        );
        let mut outputs = Vec::new();
        let mut conditions = Vec::new();
        let mut condition_args = Vec::new();
        for (i, f) in chain.iter().enumerate().rev() {
            if let Some(o) = &f.action.output {
                outputs.push((o.clone(), i));
            }
            conditions.extend(f.conditions.iter().cloned());
            condition_args.extend(std::iter::repeat_n(i, f.conditions.len()));
        }
        if let Some(o) = &step.action.output {
            outputs.push((o.clone(), 0));
        }
        conditions.extend(step.conditions.iter().cloned());
        condition_args.extend(std::iter::repeat_n(0, step.conditions.len()));
        // The step's own pre-hook, else the one function of the chain that has one.
        let (pre_hook, pre_hook_args) = match &step.pre_hook {
            Some(p) => (Some(p.clone()), 0),
            None => chain
                .iter()
                .enumerate()
                .find_map(|(i, f)| f.pre_hook.clone().map(|p| (Some(p), i)))
                .unwrap_or((None, 0)),
        };
        let mut effective = step.clone();
        effective.action = Action {
            output: None,
            ..innermost.action.clone()
        };
        effective.pre_hook = pre_hook;
        effective.conditions = conditions;
        effective.custom_states = template.custom_states_of(step).cloned().collect();
        Some((
            FunctionCall {
                names,
                args,
                condition_args,
                outputs,
                pre_hook_args,
            },
            effective,
        ))
    }

    /// The index of the arguments the action reads.
    pub fn action_args(&self) -> usize {
        self.args.len() - 1
    }
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
    let mut calls = HashMap::new();
    for (name, step) in &template.steps {
        match FunctionCall::of(&template, step) {
            Some((call, effective)) => {
                calls.insert(name.clone(), call);
                steps.insert(name.clone(), effective);
            }
            None => {
                steps.insert(name.clone(), step.clone());
            }
        }
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
        if let Some(call) = calls.get(name) {
            for v in call
                .args
                .iter()
                .chain(call.outputs.iter().map(|(o, _)| &o.format))
            {
                names.extend(crate::secrets::value_secrets(v, language));
            }
        }
        if !names.is_empty() {
            step_secrets.insert(name.clone(), names);
        }
    }
    Ok(Arc::new(CompiledTemplate {
        template,
        language,
        steps,
        calls,
        schemas,
        timeouts,
        secrets,
        step_secrets,
    }))
}
