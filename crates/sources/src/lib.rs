//! Event sources: where events come from besides HTTP. Each source turns what it sees into
//! [`taskhook_hooks::Event`]s and hands them to the engine's `fire`, which commits the fire
//! and its task before anything is acknowledged. Sources never decide what a task is.

pub mod schedule;
