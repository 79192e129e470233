//! Go `text/template` with µTask's function set, so µTask templates render unchanged.
//!
//! µTask renders every templated string with Go's `text/template`, the Go builtins, the
//! Sprig functions and a few of its own (`field`, `fieldFrom`, `eval`, `evalCache`,
//! `fromJson`, `mustFromJson`, `uuid`, `b64RawEnc`, `b64RawDec`), over a data root of
//! JSON decoded with numbers kept as `json.Number`. This module is that language: its own
//! lexer, parser and evaluator (no crate gives a Go engine whose functions can see a
//! per-rendering budget), pure like the rest of the crate, and bounded: every rendering
//! has a step budget and a byte budget, output stops at [`MAX_RENDERED_BYTES`], and
//! templates calling templates, variables and blocks nest at most [`MAX_DEPTH`] deep. A budget
//! that runs out fails with an error reading "rendering stopped: …". Every function µTask
//! has is here except `env`, `expandenv`, `getHostByName` and DSA keys, refused by name.

mod exec;
mod funcs;
mod lex;
mod parse;
mod paths;
mod printf;
mod value;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::Value;

use crate::{ExprError, MAX_RENDERED_BYTES};
use exec::{Exec, Fail};
use parse::Tree;
use value::Val;

/// Steps one rendering may take: each node, command, field read, function call and
/// `range` iteration is one.
pub const MAX_STEPS: u64 = 1_000_000;

/// Bytes the values one rendering creates may add up to (strings, lists and maps
/// functions build, text printed from values), on top of the output itself.
pub const MAX_CREATED_BYTES: usize = 32 << 20;

/// How deep `{{template}}` calls, `eval` of variables and `if`/`with`/`range` blocks may
/// nest, all counted together (each level is a few frames of the evaluator's stack).
pub const MAX_DEPTH: usize = 100;

/// What a rendering may still do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    steps: u64,
    bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            steps: MAX_STEPS,
            bytes: MAX_CREATED_BYTES,
        }
    }
}

impl Budget {
    pub(crate) fn step(&mut self) -> Result<(), Fail> {
        self.steps = self.steps.checked_sub(1).ok_or_else(|| self.stop())?;
        Ok(())
    }

    pub(crate) fn steps(&mut self, n: u64) -> Result<(), Fail> {
        self.steps = self.steps.checked_sub(n).ok_or_else(|| self.stop())?;
        Ok(())
    }

    /// Pays for `n` bytes about to be created.
    pub(crate) fn take(&mut self, n: usize) -> Result<(), Fail> {
        self.bytes = self.bytes.checked_sub(n).ok_or_else(|| self.stop())?;
        Ok(())
    }

    pub(crate) fn bytes_left(&self) -> usize {
        self.bytes
    }

    pub(crate) fn stop(&self) -> Fail {
        Fail::Stop(format!(
            "rendering stopped: the template did more work or built more data than one \
             rendering may (about {MAX_STEPS} steps or {} MiB)",
            MAX_CREATED_BYTES >> 20
        ))
    }
}

/// A syntax error with its place in the text.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    line: usize,
    column: usize,
    message: String,
}

impl SyntaxError {
    pub(crate) fn at(src: &str, pos: usize, message: impl Into<String>) -> SyntaxError {
        let (line, column) = line_column(src, pos);
        SyntaxError {
            line,
            column,
            message: message.into(),
        }
    }
}

impl From<SyntaxError> for ExprError {
    fn from(e: SyntaxError) -> Self {
        ExprError {
            message: format!(
                "template syntax error at line {}, column {}: {}",
                e.line, e.column, e.message
            ),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(src: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(src.len());
    let before = src.get(..pos).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A parsed Go template.
#[derive(Debug, Clone)]
pub struct GoTemplate {
    src: String,
    tree: Tree,
}

/// Parses a template. Unknown functions, undefined variables, `break` outside `range`
/// and every other syntax error are refused here, with their line and column.
pub fn parse(text: &str) -> Result<GoTemplate, ExprError> {
    GoTemplate::parse(text)
}

impl GoTemplate {
    pub fn parse(text: &str) -> Result<GoTemplate, ExprError> {
        let tree = parse::parse(text, &check_function)?;
        Ok(GoTemplate {
            src: text.to_string(),
            tree,
        })
    }

    /// Every function the template calls, builtins such as `eq` and `and` included.
    pub fn functions(&self) -> BTreeSet<String> {
        paths::functions(&self.tree)
    }

    /// The dotted paths the template reads from the data root: `input.name` for
    /// `{{ .input.name }}`, for `{{ $.input.name }}`, for
    /// `{{ with .input }}{{ .name }}{{ end }}`, for `{{ $x := .input }}{{ $x.name }}`
    /// and for `{{ field "input" "name" }}`. Limits: a read from something other than
    /// the root or a path of it (a `range` element, a function's result, a variable
    /// assigned more than once, the dot inside a `define`) is not listed, though the
    /// path it came from is; `{{ index .input "name" }}` lists `input`; a bare `.` at
    /// the root (which reads everything) lists nothing.
    pub fn field_paths(&self) -> BTreeSet<String> {
        paths::field_paths(&self.tree)
    }

    /// Renders over `ctx` (µTask's data root: `input`, `step`, `task`, …).
    pub fn render(&self, ctx: &Value) -> Result<String, ExprError> {
        self.render_val(Val::from_json(ctx), None)
    }

    /// Renders with template variables for `eval` and `evalCache`.
    pub fn render_with(&self, ctx: &Value, variables: &Variables) -> Result<String, ExprError> {
        self.render_val(Val::from_json(ctx), Some(variables))
    }

    fn render_val(&self, root: Val, variables: Option<&Variables>) -> Result<String, ExprError> {
        let (result, _) = Exec::new(&self.tree, root, Budget::default(), variables, 0).run();
        result.map_err(|e| self.error(e))
    }

    fn error(&self, e: Fail) -> ExprError {
        match e {
            Fail::Stop(message) => ExprError { message },
            Fail::Error { pos, message } => match pos {
                Some(pos) => {
                    let (line, column) = line_column(&self.src, pos);
                    ExprError {
                        message: format!(
                            "template error at line {line}, column {column}: {message}"
                        ),
                    }
                }
                None => ExprError {
                    message: format!("template error: {message}"),
                },
            },
        }
    }
}

/// Renders a template string over `ctx`.
pub fn render_str(text: &str, ctx: &Value) -> Result<String, ExprError> {
    GoTemplate::parse(text)?.render(ctx)
}

/// Renders a template string with template variables for `eval` and `evalCache`.
pub fn render_str_with(
    text: &str,
    ctx: &Value,
    variables: &Variables,
) -> Result<String, ExprError> {
    GoTemplate::parse(text)?.render_with(ctx, variables)
}

/// Renders a step configuration as µTask does: every string in `v`, at any depth, is
/// rendered as a template and stays a string, whatever it renders to (`"{{ .input.n }}"`
/// gives `"3"`, not `3`; `"{{ .step.a.output | toJson }}"` gives the JSON text). Numbers,
/// booleans, nulls and object keys are kept as they are. µTask leaves a configuration
/// that is a bare string unrendered; here a bare string is rendered like any other (a
/// configuration is an object, so this only matters to other callers). The rendered
/// strings together may hold at most [`MAX_RENDERED_BYTES`].
pub fn render_value(v: &Value, ctx: &Value) -> Result<Value, ExprError> {
    render_value_inner(v, ctx, None)
}

/// [`render_value`] with template variables for `eval` and `evalCache`.
pub fn render_value_with(
    v: &Value,
    ctx: &Value,
    variables: &Variables,
) -> Result<Value, ExprError> {
    render_value_inner(v, ctx, Some(variables))
}

fn render_value_inner(
    v: &Value,
    ctx: &Value,
    variables: Option<&Variables>,
) -> Result<Value, ExprError> {
    // The data root is decoded once for every string of the configuration.
    let root = Val::from_json(ctx);
    let mut left = MAX_RENDERED_BYTES;
    walk_value(v, &root, variables, &mut left)
}

fn walk_value(
    v: &Value,
    root: &Val,
    variables: Option<&Variables>,
    left: &mut usize,
) -> Result<Value, ExprError> {
    Ok(match v {
        Value::String(s) => {
            let text = if s.contains("{{") {
                GoTemplate::parse(s)?.render_val(root.clone(), variables)?
            } else {
                s.clone()
            };
            *left = left.checked_sub(text.len()).ok_or_else(|| ExprError {
                message: format!(
                    "rendering stopped: the rendered value is larger than {} MiB",
                    MAX_RENDERED_BYTES >> 20
                ),
            })?;
            Value::String(text)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| walk_value(i, root, variables, left))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, item) in m {
                out.insert(k.clone(), walk_value(item, root, variables, left)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn check_function(name: &str) -> Result<(), String> {
    if funcs::is_function(name) {
        Ok(())
    } else {
        Err(funcs::unknown_function(name))
    }
}

/// Whether `name` is a function templates may call.
pub fn is_function(name: &str) -> bool {
    funcs::is_function(name)
}

/// Every function templates may call, sorted.
pub fn function_names() -> Vec<&'static str> {
    funcs::names()
}

/// A template variable (µTask's `variables:` entry): a fixed `value`, or a JavaScript
/// `expression` rendered as a template and then evaluated by the caller's evaluator.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    pub value: Option<Value>,
    pub expression: Option<String>,
}

/// Evaluates a variable's JavaScript: given the variable's name and its expression
/// already rendered as a template, returns the result as text (µTask returns the
/// JavaScript value's string form).
pub type ExpressionEvaluator = dyn Fn(&str, &str) -> Result<String, ExprError> + Send + Sync;

/// The variables `eval` and `evalCache` read, and the cache `evalCache` fills. Keep one
/// for as long as cached results may be reused (µTask keeps them for a task's run).
pub struct Variables {
    by_name: HashMap<String, Variable>,
    evaluator: Option<Box<ExpressionEvaluator>>,
    cache: Mutex<HashMap<String, Value>>,
}

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variables")
            .field("by_name", &self.by_name)
            .field("evaluator", &self.evaluator.is_some())
            .finish_non_exhaustive()
    }
}

impl Variables {
    /// Variables without an expression evaluator: `eval` of an `expression` variable
    /// fails with an error naming it.
    pub fn new(variables: impl IntoIterator<Item = Variable>) -> Variables {
        Variables {
            by_name: variables.into_iter().map(|v| (v.name.clone(), v)).collect(),
            evaluator: None,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Hands `expression` variables to `evaluator`.
    pub fn with_expression_evaluator(
        mut self,
        evaluator: impl Fn(&str, &str) -> Result<String, ExprError> + Send + Sync + 'static,
    ) -> Variables {
        self.evaluator = Some(Box::new(evaluator));
        self
    }

    /// Forgets what `evalCache` remembered.
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Variable> {
        self.by_name.get(name)
    }

    pub(crate) fn cached(&self, name: &str) -> Option<Value> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn remember(&self, name: &str, v: Value) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), v);
    }

    pub(crate) fn evaluate_expression(&self, name: &str, rendered: &str) -> Result<String, String> {
        match &self.evaluator {
            Some(f) => f(name, rendered).map_err(|e| e.message),
            None => Err(format!(
                "variable {name:?} is a JavaScript expression, and no expression evaluator \
                 was given"
            )),
        }
    }
}

/// Renders a variable's text inside a running rendering (for `eval`): same data root,
/// same budget, one level deeper.
pub(crate) fn render_nested(parent: &mut Exec<'_>, text: &str) -> Result<String, Fail> {
    let tree = parse::parse(text, &check_function).map_err(|e| {
        Fail::msg(format!(
            "line {}, column {}: {}",
            e.line, e.column, e.message
        ))
    })?;
    parent.enter()?;
    let budget = std::mem::take(&mut parent.budget);
    let exec = Exec::new(
        &tree,
        parent.root.clone(),
        budget,
        parent.variables,
        parent.depth,
    );
    let (result, budget) = exec.run();
    parent.budget = budget;
    parent.depth -= 1;
    result
}
