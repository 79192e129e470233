//! The template document: what a task is made of. Parsed from YAML or JSON with
//! unknown fields rejected; [`crate::validate`] checks the rules that serde cannot.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::condition::Condition;
use crate::input::InputSpec;

/// A taskhook template: a graph of steps that each task created from it runs with its own
/// inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The template's name, also its URL segment: 1-128 letters, digits, `_`, `-` or `.`.
    /// A µTask template (read through µTask's habits, or written in Go templates) is named
    /// as µTask names it: trimmed and in lower case.
    pub name: String,
    /// The templating language of its strings: `jinja` (taskhook's) or `go` (µTask's); when
    /// absent, told from the strings themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<crate::language::Language>,
    /// What the template does, in one line.
    #[serde(default)]
    pub description: String,
    /// A longer description, shown with the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_description: Option<String>,
    /// A link to the template's documentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_link: Option<String>,
    /// Templated title of each task, rendered at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_format: Option<String>,
    /// Templated result of each task, rendered when it reaches DONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_format: Option<Value>,
    /// The inputs a task is created with, read as `input.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputSpec>,
    /// The inputs the resolver gives when starting a task (not with `auto_runnable`), read
    /// as `resolver_input.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolver_inputs: Vec<InputSpec>,
    /// Named values available to every templated string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable>,
    /// The steps, by name (at least one).
    #[serde(default)]
    pub steps: BTreeMap<String, Step>,
    /// Configurations an action's `base_configuration` names, merged under its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub base_configurations: BTreeMap<String, Value>,
    /// Tags given to every task (templated; the request's tags are added over them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Tasks start at once; otherwise they wait in TODO for a resolver.
    #[serde(default)]
    pub auto_runnable: bool,
    /// Users who may resolve, read and retry this template's tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_resolver_usernames: Vec<String>,
    /// Every user may resolve this template's tasks.
    #[serde(default)]
    pub allow_all_resolver_usernames: bool,
    /// No task can be created from a blocked template.
    #[serde(default)]
    pub blocked: bool,
    /// Not listed unless asked for.
    #[serde(default)]
    pub hidden: bool,
    /// How many runs a task may take before it is BLOCKED (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max: Option<u32>,
    /// Functions the steps call, by name: written here, or copied in from the server's
    /// function library when the template is stored, so a task pins them with its version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functions: BTreeMap<String, Function>,
}

pub const DEFAULT_RETRY_MAX: u32 = 100;
pub const DEFAULT_STEP_MAX_RETRIES: u32 = 10_000;

impl Template {
    pub fn retry_max(&self) -> u32 {
        self.retry_max.unwrap_or(DEFAULT_RETRY_MAX)
    }

    /// The function a step calls, when its action type names one.
    pub fn function_of(&self, step: &Step) -> Option<&Function> {
        self.functions.get(&step.action.kind)
    }

    /// The functions an action of type `kind` runs through, outermost first, each with its
    /// name: empty when `kind` names no function; the last one's action is not a function.
    /// A function reached twice (a cycle) or a chain longer than [`MAX_FUNCTION_DEPTH`] is
    /// an error carrying the names walked.
    pub fn function_chain(&self, kind: &str) -> Result<Vec<(&str, &Function)>, FunctionChainError> {
        let mut chain: Vec<(&str, &Function)> = Vec::new();
        let mut next = kind;
        while let Some((name, f)) = self.functions.get_key_value(next) {
            let names = |chain: &[(&str, &Function)]| -> Vec<String> {
                chain
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .chain(std::iter::once(name.clone()))
                    .collect()
            };
            if chain.iter().any(|(n, _)| *n == name) {
                return Err(FunctionChainError::Cycle(names(&chain)));
            }
            if chain.len() == MAX_FUNCTION_DEPTH {
                return Err(FunctionChainError::TooDeep(names(&chain)));
            }
            chain.push((name.as_str(), f));
            next = &f.action.kind;
        }
        Ok(chain)
    }

    /// [`Template::function_chain`] as far as it goes: the functions before a cycle or past
    /// the depth limit are left out (validation refuses such templates).
    pub fn functions_called<'a>(&'a self, kind: &str) -> Vec<&'a Function> {
        let mut chain: Vec<(&String, &Function)> = Vec::new();
        let mut next = kind;
        while let Some((name, f)) = self.functions.get_key_value(next) {
            if chain.len() == MAX_FUNCTION_DEPTH || chain.iter().any(|(n, _)| *n == name) {
                break;
            }
            chain.push((name, f));
            next = &f.action.kind;
        }
        chain.into_iter().map(|(_, f)| f).collect()
    }

    /// A step's custom states, including those of every function it calls.
    pub fn custom_states_of<'a>(&'a self, step: &'a Step) -> impl Iterator<Item = &'a String> + 'a {
        step.custom_states.iter().chain(
            self.functions_called(&step.action.kind)
                .into_iter()
                .flat_map(|f| f.custom_states.iter()),
        )
    }

    /// Action types the steps and functions name that are neither functions of the template
    /// nor actions `is_action` knows: the functions to fetch from a library.
    pub fn missing_functions(&self, is_action: impl Fn(&str) -> bool) -> BTreeSet<String> {
        let kinds = self.steps.values().map(|s| &s.action.kind);
        let from_functions = self.functions.values().map(|f| &f.action.kind);
        kinds
            .chain(from_functions)
            .filter(|k| !is_action(k) && !self.functions.contains_key(*k))
            .cloned()
            .collect()
    }
}

/// Most functions one step may run through: a step calling a function that calls another
/// function, and so on.
pub const MAX_FUNCTION_DEPTH: usize = 10;

/// Why an action type does not resolve through functions to an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionChainError {
    /// The names walked, ending with the one met again.
    Cycle(Vec<String>),
    /// The names walked, one past [`MAX_FUNCTION_DEPTH`].
    TooDeep(Vec<String>),
}

/// A named value available to templating as `{{ var.<name> }}` (`{{ eval "<name>" }}` in Go
/// templates). Its `value` is itself templated; or, as in µTask, its `expression` is
/// templated and then run as JavaScript (sandboxed, `expression_timeout` at most, 10 s by
/// default), giving the result's string form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    /// The value (templated); not with `expression`.
    #[serde(default)]
    pub value: Value,
    /// JavaScript (templated first) whose result is the value; not with `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Longest an `expression` may run, e.g. `500ms` (at most and by default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression_timeout: Option<String>,
}

/// A node of the task's graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step does.
    #[serde(default)]
    pub description: String,
    /// What the step runs.
    pub action: Action,
    /// An action run before the main one on every attempt; its result is `{{ pre_hook.output }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<Action>,
    /// `step`, `step:STATE1,STATE2` or `step:ANY`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// States of its own the step may end in (set by its conditions), in capitals by habit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_states: Vec<String>,
    /// `skip` conditions, decided before the step runs, and `check` conditions, after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Templated expression yielding a list; the step runs once per item as `{{ iterator }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<String>,
    /// How a foreach step runs its items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach_strategy: Option<ForeachStrategy>,
    /// How long the step waits between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_pattern: Option<RetryPattern>,
    /// How many times the step is retried after a server error (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Safe to run again after a crash interrupted it.
    #[serde(default)]
    pub idempotent: bool,
    /// JSON Schema the step's output must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
    /// Longest one attempt may take, e.g. `30s`, `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Named resources this step holds while it runs (server-wide limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
}

impl Step {
    pub fn max_retries(&self) -> u32 {
        self.max_retries.unwrap_or(DEFAULT_STEP_MAX_RETRIES)
    }

    pub fn parsed_dependencies(&self) -> Vec<Dependency> {
        self.dependencies
            .iter()
            .map(|d| Dependency::parse(d))
            .collect()
    }
}

/// What a step does: an action type, its configuration, and how its output is shaped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// A builtin action, or a function of the template or of the server's library.
    #[serde(rename = "type")]
    pub kind: String,
    /// The name of an entry of the template's `base_configurations`, merged under
    /// `configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_configuration: Option<String>,
    /// The action's configuration (its strings templated); each action type checks its own.
    #[serde(default = "empty_object", skip_serializing_if = "Value::is_null")]
    pub configuration: Value,
    /// How the action's output is shaped into the step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub strategy: OutputStrategy,
    /// The templated value, reading the action's output as `output`.
    pub format: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStrategy {
    /// The templated `format` object is merged into the action's output.
    Merge,
    /// The templated `format` replaces the action's output.
    Template,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForeachStrategy {
    /// Every item at once (the default).
    #[default]
    Parallel,
    /// One item after the other, in order.
    Sequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryPattern {
    /// From 10 s, growing by a quarter each try, up to 10 minutes (the default).
    #[default]
    Seconds,
    /// 1.6 minutes more each try, up to 30 minutes.
    Minutes,
    /// From an hour, 10 minutes more each try, up to 3 hours.
    Hours,
}

impl RetryPattern {
    /// Delay before attempt `tries + 1`, in milliseconds, before jitter.
    /// seconds: 10 s ×1.25 per try up to 10 min; minutes: 1.6 min per try up to 30 min;
    /// hours: 1 h + 10 min per further try up to 3 h.
    pub fn delay_ms(self, tries: u32) -> u64 {
        let t = tries.max(1) as f64;
        let ms = match self {
            RetryPattern::Seconds => (10_000.0 * 1.25f64.powf(t - 1.0)).min(600_000.0),
            RetryPattern::Minutes => (96_000.0 * t).min(1_800_000.0),
            RetryPattern::Hours => (3_600_000.0 + 600_000.0 * (t - 1.0)).min(10_800_000.0),
        };
        ms as u64
    }
}

/// One entry of `dependencies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub step: String,
    pub states: DependencyStates,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyStates {
    /// Satisfied once the step and its ancestors are final, whatever the state, PRUNE included.
    Any,
    /// Satisfied when the step is in one of these states (default: DONE).
    OneOf(Vec<String>),
}

impl Dependency {
    pub fn parse(s: &str) -> Dependency {
        match s.split_once(':') {
            None => Dependency {
                step: s.trim().to_string(),
                states: DependencyStates::OneOf(vec!["DONE".into()]),
            },
            Some((step, states)) => {
                let states = states.trim();
                let states = if states == "ANY" {
                    DependencyStates::Any
                } else {
                    DependencyStates::OneOf(
                        states.split(',').map(|s| s.trim().to_string()).collect(),
                    )
                };
                Dependency {
                    step: step.trim().to_string(),
                    states,
                }
            }
        }
    }
}

/// A reusable named action with arguments: a step whose `action.type` names a function runs
/// the function's action with the step's configuration available as `{{ function_args.x }}`.
/// The function's action may itself name a function (as in µTask): its configuration,
/// rendered with this function's arguments, is that function's arguments, and so on down
/// to an action (see [`Template::function_chain`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// Required in a function document; inside a template's `functions` map the key names it.
    #[serde(default)]
    pub name: String,
    /// What the function does.
    #[serde(default)]
    pub description: String,
    /// What the function runs; `function_args.<name>` reads the calling step's configuration.
    pub action: Action,
    /// An action run before the main one on every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<Action>,
    /// Conditions of every step calling the function, after the step's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// States of its own a step calling the function may end in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_states: Vec<String>,
}

/// Error from reading a template or function document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
}

/// Parses a YAML or JSON document (JSON is valid YAML, but serde_json gives better JSON errors).
pub fn parse_document<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, ParseError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| ParseError {
            message: e.to_string(),
        })
    } else {
        // YAML 1.2 booleans only: `n`, `no`, `off` stay strings (an input named `n` is not `false`).
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        serde_saphyr::from_str_with_options(text, options).map_err(|e| ParseError {
            message: e.to_string(),
        })
    }
}

/// Parses a document the way µTask reads it too: as written when it is taskhook's form
/// (errors then point at the line), else after [`crate::utask`]'s normalisation, with the
/// notes it took. A document neither way reads is refused with the path of what is wrong.
/// The third member says whether µTask's normalisation was needed.
fn parse_normalized<T: for<'de> Deserialize<'de>>(
    text: &str,
    normalize: fn(&mut Value, &mut crate::utask::Notes),
) -> Result<(T, crate::utask::Notes, bool), ParseError> {
    let typed_error = match parse_document::<T>(text) {
        Ok(t) => return Ok((t, Default::default(), false)),
        Err(e) => e,
    };
    // Not a document at all: the first error says why.
    let Ok(mut doc) = read_document(text) else {
        return Err(typed_error);
    };
    let mut notes = crate::utask::Notes::default();
    normalize(&mut doc, &mut notes);
    serde_path_to_error::deserialize(doc)
        .map(|t| (t, notes, true))
        .map_err(|e| ParseError {
            message: match e.path().to_string() {
                p if p == "." => e.inner().to_string(),
                p => format!("{p}: {}", e.inner()),
            },
        })
}

/// A YAML or JSON document as data, read as [`Template::parse`] reads it (a document indented
/// with tabs, as µTask takes it, included): what the published template schema describes.
pub fn read_document(text: &str) -> Result<Value, ParseError> {
    parse_document::<Value>(text)
        .or_else(|e| untab(text).map_or(Err(e), |spaced| parse_document::<Value>(&spaced)))
}

/// `text` with each tab that indents a line as four spaces, when a line is indented with
/// tabs only (as µTask's YAML reader takes them); `None` otherwise.
fn untab(text: &str) -> Option<String> {
    let tabbed = |l: &str| l.starts_with('\t') && !l.trim_start_matches('\t').starts_with(' ');
    if !text.lines().any(tabbed) {
        return None;
    }
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let tabs = l.len() - l.trim_start_matches('\t').len();
            format!("{}{}", "    ".repeat(tabs), &l[tabs..])
        })
        .collect();
    Some(lines.join("\n"))
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, ParseError> {
        Self::parse_with_notes(text).map(|(t, _)| t)
    }

    /// [`Template::parse`], with what µTask's habits in the document mean here (see
    /// [`crate::utask`]).
    ///
    /// A µTask template (one that needed µTask's normalisation, or is written in Go
    /// templates) is named as µTask names it ([`crate::utask::template_name`]: trimmed, in
    /// lower case), with a note when that changed its name.
    pub fn parse_with_notes(text: &str) -> Result<(Template, crate::utask::Notes), ParseError> {
        let (mut t, mut notes, utask_form): (Template, _, _) =
            parse_normalized(text, crate::utask::template)?;
        if utask_form || t.written_in_go() {
            let name = crate::utask::template_name(&t.name);
            if name != t.name {
                notes.0.push(format!(
                    "name: µTask names this template {name:?} (trimmed, in lower case): use that name in URLs"
                ));
                t.name = name;
            }
        }
        Ok((t, notes))
    }

    /// Whether the template is written in Go templates (µTask's language): it says so, or
    /// its strings show Go and none shows MiniJinja.
    pub fn written_in_go(&self) -> bool {
        match self.language {
            Some(l) => l == crate::language::Language::Go,
            None => {
                let (mut go, mut jinja) = (false, false);
                if let Ok(v) = serde_json::to_value(self) {
                    crate::language::each_string(&v, &mut |s| match crate::language::detect(s) {
                        Some(crate::language::Language::Go) => go = true,
                        Some(crate::language::Language::Jinja) => jinja = true,
                        None => {}
                    });
                }
                go && !jinja
            }
        }
    }
}

impl Function {
    /// Parses a function document, µTask's habits included (see [`Template::parse`]).
    pub fn parse(text: &str) -> Result<Function, ParseError> {
        parse_normalized(text, crate::utask::function).map(|(f, _, _)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tab_indented_utask_document_is_read_with_four_spaces_a_tab() {
        let text = "name: t\nsteps:\n\ta:\n\t\taction: {type: echo}\n\tb:\n\t\tdescription:\n\t\taction: {type: echo}\n";
        let t = Template::parse(text).unwrap();
        assert_eq!(t.steps.keys().collect::<Vec<_>>(), ["a", "b"]);
        // Spaces after tabs are not guessed at.
        assert!(untab("a:\n\t  b: 1\n").is_none());
    }

    #[test]
    fn a_utask_template_is_named_as_utask_names_it() {
        // Read through µTask's habits (a bare `description:`).
        let (t, notes) = Template::parse_with_notes(
            "name: ' Hello-World '\ndescription:\nsteps: {a: {action: {type: echo}}}\n",
        )
        .unwrap();
        assert_eq!(t.name, "hello-world");
        assert!(
            notes
                .0
                .iter()
                .any(|n| n.starts_with("name: ") && n.contains("\"hello-world\"")),
            "{notes:?}"
        );
        // Written in Go templates, said or shown.
        for yaml in [
            "name: Hello-World\nlanguage: go\nsteps: {a: {action: {type: echo}}}\n",
            "name: Hello-World\nsteps: {a: {action: {type: echo, configuration: {output: '{{ .task.id }}'}}}}\n",
        ] {
            assert_eq!(Template::parse(yaml).unwrap().name, "hello-world", "{yaml}");
        }
        // taskhook's own templates keep their names.
        for yaml in [
            "name: Hello-World\nsteps: {a: {action: {type: echo}}}\n",
            "name: Hello-World\nsteps: {a: {action: {type: echo, configuration: {output: '{{ task.id }}'}}}}\n",
        ] {
            let (t, notes) = Template::parse_with_notes(yaml).unwrap();
            assert_eq!(
                (t.name.as_str(), notes.0.len()),
                ("Hello-World", 0),
                "{yaml}"
            );
        }
    }

    #[test]
    fn a_document_neither_way_reads_is_refused_with_the_path() {
        let e = Template::parse(
            "name: t\ndescription:\nsteps:\n  a:\n    action: {type: echo, nope: 1}\n",
        )
        .unwrap_err();
        assert!(e.message.starts_with("steps.a.action"), "{}", e.message);
    }

    #[test]
    fn dependency_syntax() {
        assert_eq!(
            Dependency::parse("a"),
            Dependency {
                step: "a".into(),
                states: DependencyStates::OneOf(vec!["DONE".into()])
            }
        );
        assert_eq!(Dependency::parse("a:ANY").states, DependencyStates::Any);
        assert_eq!(
            Dependency::parse("a:DONE, FOO").states,
            DependencyStates::OneOf(vec!["DONE".into(), "FOO".into()])
        );
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(RetryPattern::Seconds.delay_ms(1), 10_000);
        assert_eq!(RetryPattern::Seconds.delay_ms(2), 12_500);
        assert_eq!(RetryPattern::Seconds.delay_ms(100), 600_000);
        assert_eq!(RetryPattern::Minutes.delay_ms(1), 96_000);
        assert_eq!(RetryPattern::Minutes.delay_ms(1000), 1_800_000);
        assert_eq!(RetryPattern::Hours.delay_ms(1), 3_600_000);
        assert_eq!(RetryPattern::Hours.delay_ms(100), 10_800_000);
    }

    #[test]
    fn yaml_booleans_are_only_true_and_false() {
        let v: serde_json::Value = parse_document("a: n\nb: no\nc: off\nd: true\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": "n", "b": "no", "c": "off", "d": true})
        );
    }

    #[test]
    fn yaml_and_json_parse_and_unknown_fields_fail() {
        let y = "name: t\nsteps:\n  a:\n    action:\n      type: echo\n      configuration: {output: 1}\n";
        let t = Template::parse(y).unwrap();
        assert_eq!(t.steps["a"].action.kind, "echo");
        let j = r#"{"name":"t","steps":{"a":{"action":{"type":"echo"}}}}"#;
        assert_eq!(Template::parse(j).unwrap().steps.len(), 1);
        let err = Template::parse("name: t\nstepz: {}\n").unwrap_err();
        assert!(err.message.contains("stepz"), "{}", err.message);
    }
}
