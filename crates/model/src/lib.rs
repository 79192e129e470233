//! The domain of taskhook as plain data and pure functions: templates, inputs,
//! steps, task and step states, and the rules that validate them.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of storage,
//! HTTP or the runtime; everything here tests in microseconds.

pub mod condition;
pub mod duration;
pub mod input;
pub mod language;
pub mod name;
pub mod schema;
pub mod schema_path;
pub mod scope;
pub mod secret;
pub mod state;
pub mod template;
pub mod utask;
pub mod validate;

pub use condition::{Assert, Condition, ConditionForeach, ConditionKind, Operator};
pub use input::{InputError, InputSpec, InputType};
pub use language::Language;
pub use state::{StepState, TaskState, TransitionError};
pub use template::{
    Action, Dependency, ForeachStrategy, Function, FunctionChainError, MAX_FUNCTION_DEPTH,
    OutputSpec, OutputStrategy, RetryPattern, Step, Template, Variable,
};
pub use validate::{Catalog, TemplateError, TemplateLimits, ValidationError};
