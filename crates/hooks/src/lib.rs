//! Pure logic behind hook triggers: verifying signed webhook deliveries and
//! computing cron due times. Nothing here does I/O, blocks or spawns tasks, so
//! the server and the scheduler can call it from anywhere.

pub mod hook;
pub mod schedule;
pub mod signature;
pub mod source;

pub use hook::{
    Decision, Event, Hook, HookError, HookMetadata, MAX_HOOK_PART_LEN, Overlap, check_payload,
    decide, valid_hook_part,
};
pub use schedule::{Misfire, Schedule};
pub use signature::WebhookSettings;
pub use source::{Message, SourceSpec};
