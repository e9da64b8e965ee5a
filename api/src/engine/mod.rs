//! The conversation engine: runs a published flow one input at a time.
//!
//! Pure and deterministic: no I/O, no clocks, no randomness. The runtime
//! persists [`State`], feeds [`Input`]s to [`step()`] and carries out the
//! [`Output`]s (transcript events, webhook calls).

pub mod answer;
pub mod compiled;
pub mod condition;
pub mod model;
pub mod pattern;
pub mod state;
pub mod step;
pub mod template;
pub mod webhook;

#[cfg(test)]
pub(crate) mod proptests;
#[cfg(test)]
mod tests;

pub use self::answer::check_answer;
pub use self::compiled::CompiledFlow;
pub use self::model::{
    Block, BlockKind, Branch, Choice, Condition, ConditionOperator, Flow, QuestionType, Rule,
};
pub use self::state::{Position, State};
pub use self::step::{
    ChatMessage, Input, MAX_BLOCKS_PER_STEP, Output, StepError, StepResult, step,
};
pub use self::webhook::{Instruction, WebhookOutcome};
