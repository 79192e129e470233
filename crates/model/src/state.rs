//! Task and step states and the transitions allowed between them.
//!
//! The store refuses an illegal task transition by calling [`TaskState::check_transition`];
//! the engine is the only writer of step states and follows [`StepState`]'s classification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The lifecycle of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Created, waiting for a resolver (template not auto-runnable).
    Todo,
    /// Queued for the engine (possibly with a future start time).
    Ready,
    /// Claimed by the engine; steps are being run.
    Running,
    /// Nothing to do until a timer or another task wakes it.
    Waiting,
    /// Stopped on purpose by a person; resumes with resolve or retry.
    Paused,
    /// Needs a human: a client error, a fatal error, retries exhausted, a crashed non-idempotent step, a deadlock.
    Blocked,
    Done,
    Cancelled,
    /// Closed by a person without running (on): it will never be done (µTask's WONTFIX).
    Wontfix,
}

pub const TASK_STATES: [TaskState; 9] = [
    TaskState::Todo,
    TaskState::Ready,
    TaskState::Running,
    TaskState::Waiting,
    TaskState::Paused,
    TaskState::Blocked,
    TaskState::Done,
    TaskState::Cancelled,
    TaskState::Wontfix,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: TaskState,
    pub to: TaskState,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Todo => "TODO",
            TaskState::Ready => "READY",
            TaskState::Running => "RUNNING",
            TaskState::Waiting => "WAITING",
            TaskState::Paused => "PAUSED",
            TaskState::Blocked => "BLOCKED",
            TaskState::Done => "DONE",
            TaskState::Cancelled => "CANCELLED",
            TaskState::Wontfix => "WONTFIX",
        }
    }

    /// DONE, CANCELLED and WONTFIX never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Cancelled | TaskState::Wontfix
        )
    }

    /// The one place that says which task transitions exist.
    pub fn can_go_to(self, to: TaskState) -> bool {
        use TaskState::*;
        match (self, to) {
            // Resolving a TODO task, or scheduling it for later.
            (Todo, Ready) => true,
            // The engine claims a ready task; waking a waiting task makes it ready.
            (Ready | Waiting, Running) | (Waiting, Ready) => true,
            // A run ends in one of these (RUNNING→READY: a retry or a released lease).
            (Running, Ready | Waiting | Blocked | Done) => true,
            // A human resumes a blocked or paused task.
            (Blocked | Paused, Ready) => true,
            // Pause takes effect at once unless a run is in progress (then the engine stops it).
            (Todo | Ready | Waiting | Blocked | Running, Paused) => true,
            // A person closes a task that is not running: not resolved yet, blocked or paused.
            (Todo | Blocked | Paused, Wontfix) => true,
            // Cancel from anything not final.
            (from, Cancelled) => !from.is_final(),
            _ => false,
        }
    }

    pub fn check_transition(self, to: TaskState) -> Result<(), TransitionError> {
        if self.can_go_to(to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TASK_STATES
            .iter()
            .copied()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// The state of one step. Builtin states plus the template's custom states.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepState {
    Todo,
    Running,
    Done,
    ClientError,
    ServerError,
    FatalError,
    ToRetry,
    RetryNow,
    Prune,
    Waiting,
    Expanded,
    Crashed,
    Custom(String),
}

pub const BUILTIN_STEP_STATES: [&str; 12] = [
    "TODO",
    "RUNNING",
    "DONE",
    "CLIENT_ERROR",
    "SERVER_ERROR",
    "FATAL_ERROR",
    "TO_RETRY",
    "RETRY_NOW",
    "PRUNE",
    "WAITING",
    "EXPANDED",
    "CRASHED",
];

impl StepState {
    pub fn as_str(&self) -> &str {
        match self {
            StepState::Todo => "TODO",
            StepState::Running => "RUNNING",
            StepState::Done => "DONE",
            StepState::ClientError => "CLIENT_ERROR",
            StepState::ServerError => "SERVER_ERROR",
            StepState::FatalError => "FATAL_ERROR",
            StepState::ToRetry => "TO_RETRY",
            StepState::RetryNow => "RETRY_NOW",
            StepState::Prune => "PRUNE",
            StepState::Waiting => "WAITING",
            StepState::Expanded => "EXPANDED",
            StepState::Crashed => "CRASHED",
            StepState::Custom(s) => s,
        }
    }

    /// Parses a builtin state name, or keeps an unknown name as a custom state.
    pub fn parse(s: &str) -> StepState {
        match s {
            "TODO" => StepState::Todo,
            "RUNNING" => StepState::Running,
            "DONE" => StepState::Done,
            "CLIENT_ERROR" => StepState::ClientError,
            "SERVER_ERROR" => StepState::ServerError,
            "FATAL_ERROR" => StepState::FatalError,
            "TO_RETRY" => StepState::ToRetry,
            "RETRY_NOW" => StepState::RetryNow,
            "PRUNE" => StepState::Prune,
            "WAITING" => StepState::Waiting,
            "EXPANDED" => StepState::Expanded,
            "CRASHED" => StepState::Crashed,
            other => StepState::Custom(other.to_string()),
        }
    }

    pub fn is_builtin_name(s: &str) -> bool {
        BUILTIN_STEP_STATES.contains(&s)
    }

    /// Final states never change during a run: DONE, PRUNE and custom states.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            StepState::Done | StepState::Prune | StepState::Custom(_)
        )
    }

    /// States from which the engine retries the step later, with backoff.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StepState::ServerError | StepState::ToRetry)
    }

    /// States that stop the task for a human.
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            StepState::ClientError | StepState::FatalError | StepState::Crashed
        )
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StepState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StepState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(StepState::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_task_states_never_change() {
        for from in TASK_STATES.iter().filter(|s| s.is_final()) {
            for to in TASK_STATES {
                assert!(!from.can_go_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_task_transition_is_listed() {
        use TaskState::*;
        let allowed: Vec<(TaskState, TaskState)> = vec![
            (Todo, Ready),
            (Todo, Paused),
            (Todo, Cancelled),
            (Ready, Running),
            (Ready, Paused),
            (Ready, Cancelled),
            (Running, Ready),
            (Running, Waiting),
            (Running, Blocked),
            (Running, Done),
            (Running, Paused),
            (Running, Cancelled),
            (Waiting, Ready),
            (Waiting, Running),
            (Waiting, Paused),
            (Waiting, Cancelled),
            (Paused, Ready),
            (Paused, Cancelled),
            (Blocked, Ready),
            (Blocked, Paused),
            (Blocked, Cancelled),
            (Todo, Wontfix),
            (Paused, Wontfix),
            (Blocked, Wontfix),
        ];
        for from in TASK_STATES {
            for to in TASK_STATES {
                assert_eq!(
                    from.can_go_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn task_state_round_trips_through_its_name() {
        for s in TASK_STATES {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        assert!("nope".parse::<TaskState>().is_err());
    }

    #[test]
    fn step_state_names_round_trip_and_unknown_is_custom() {
        for name in BUILTIN_STEP_STATES {
            assert_eq!(StepState::parse(name).as_str(), name);
        }
        assert_eq!(
            StepState::parse("APPROVED"),
            StepState::Custom("APPROVED".into())
        );
        assert!(StepState::Custom("X".into()).is_final());
    }
}
