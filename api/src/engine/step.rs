//! Advancing a conversation by one input.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::answer::check_answer;
use super::compiled::CompiledFlow;
use super::condition::holds;
use serde_json::{Map, Value};

use super::model::{
    Block, BlockKind, Branch, Choice, MAX_CALLBACK_TIMEOUT_SECONDS, MAX_WAIT_SECONDS, QuestionType,
};
use super::state::{Position, State};
use super::template::render;
use super::webhook::{Instruction, WebhookOutcome};
use crate::nul::holds_nul;

/// How many blocks one step may run without waiting before the bot is
/// stopped, so a question-less loop cannot spin forever.
pub const MAX_BLOCKS_PER_STEP: usize = 100;

/// What advances a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Begin at the flow's start block.
    Start,
    /// The visitor's reply to the pending question, as typed.
    Answer(String),
    /// The result of the sync webhook call the conversation waits for.
    WebhookResult(WebhookOutcome),
    /// The pause the conversation is in is over (for a CALLBACK: its timeout).
    Resume,
    /// The customer's system posted to the callback URL: these keys become variables.
    Callback(Map<String, Value>),
}

/// One thing a step produced, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An event to append to the transcript.
    Say(ChatMessage),
    /// An async webhook call to queue (the runtime writes an outbox row).
    ///
    /// The payload should use the state at this point. Answers and
    /// variables only change before the first block of a step runs, so the
    /// `answers` and `variables` of the state after the step are exactly
    /// those at this point; only the position may differ.
    QueueWebhook {
        /// The account webhook to call.
        webhook_id: String,
        /// The WEBHOOK block that asked for the call.
        block_id: String,
    },
    /// A sync webhook call for the runtime to make now, then step again with
    /// `Input::WebhookResult`. Always the last output of its step.
    CallWebhook {
        /// The account webhook to call.
        webhook_id: String,
        /// The WEBHOOK block that asked for the call.
        block_id: String,
    },
}

/// A transcript event. Serialized as `{"type": "BOT_MESSAGE", "text": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
pub enum ChatMessage {
    /// The bot says something (a rendered MESSAGE or webhook text).
    BotMessage {
        /// The rendered text.
        text: String,
    },
    /// The bot asks something and waits for the answer.
    Question {
        /// The rendered question.
        text: String,
        /// How the answer will be checked.
        question_type: QuestionType,
        /// The options, for a CHOICE question only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        choices: Option<Vec<Choice>>,
    },
    /// What the visitor typed, verbatim.
    VisitorMessage {
        /// The raw text.
        text: String,
    },
    /// The visitor is sent to a web address (the widget opens it).
    Redirect {
        /// The rendered address.
        url: String,
    },
    /// Why the visitor's answer was refused.
    InvalidAnswer {
        /// A message for the visitor.
        text: String,
    },
    /// The conversation is over; `error` says why if it did not end
    /// normally.
    Ended {
        /// Why the bot stopped, if it was not an END block or a null `next`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Everything one step produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepResult {
    /// What happened, in order.
    pub outputs: Vec<Output>,
    /// Things worth logging that the visitor does not see (skipped
    /// instructions, a goto to a missing block, a failed webhook call).
    pub notes: Vec<String>,
    /// The block each `Output::Say` came from, in the same order (`None` when there was no
    /// block, as for an empty flow's end).
    pub say_blocks: Vec<Option<String>>,
}

/// Why an input was refused; the state is then unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepError {
    /// Any input after the conversation ended.
    AlreadyEnded,
    /// A webhook result before the conversation started.
    NotStarted,
    /// An answer while no question is pending (not started, or awaiting a
    /// webhook).
    NoPendingQuestion,
    /// A webhook result while no sync webhook call is pending.
    NotAwaitingWebhook,
    /// `Start` on a conversation that already started.
    AlreadyStarted,
    /// An answer while the bot pauses (a WAIT block): no question is asked yet.
    Pausing,
    /// `Resume` while the conversation is not pausing.
    NotPausing,
    /// A callback while the conversation is not at a CALLBACK block.
    NotAwaitingCallback,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepError::AlreadyEnded => "the conversation has already ended",
            StepError::NotStarted => "the conversation has not started yet",
            StepError::NoPendingQuestion => "there is no question waiting for an answer",
            StepError::NotAwaitingWebhook => "the conversation is not waiting for a webhook result",
            StepError::AlreadyStarted => "the conversation has already started",
            StepError::Pausing => {
                "the bot is pausing before it goes on: answer once it asks its next question"
            }
            StepError::NotPausing => "the conversation is not pausing",
            StepError::NotAwaitingCallback => {
                "the conversation is not waiting for a callback (not yet, or no longer)"
            }
        })
    }
}

impl std::error::Error for StepError {}

/// Advances the conversation by one input. Mutates `state` only on `Ok`.
///
/// On `Ok`, the state is `AwaitingAnswer` (and the last output is a
/// `Question`), `AwaitingWebhook` (last output `CallWebhook`), `Waiting` (the runtime resumes
/// it with `Input::Resume` after its seconds) or `Ended` (last output `Ended`).
///
/// # Errors
///
/// A [`StepError`] when the input does not fit the conversation's position
/// (see its variants); the state is then left as it was.
pub fn step(flow: &CompiledFlow, state: &mut State, input: Input) -> Result<StepResult, StepError> {
    // Every refusal is decided here, before anything is touched, which is
    // what keeps the state unchanged on `Err`.
    let resume = match (&state.position, input) {
        (Position::Ended, _) => return Err(StepError::AlreadyEnded),
        (Position::NotStarted, Input::Start) => Resume::Start,
        (_, Input::Start) => return Err(StepError::AlreadyStarted),
        (Position::AwaitingAnswer { block_id }, Input::Answer(text)) => {
            Resume::Answer(block_id.clone(), text)
        }
        (Position::Waiting { .. } | Position::AwaitingCallback { .. }, Input::Answer(_)) => {
            return Err(StepError::Pausing);
        }
        (_, Input::Answer(_)) => return Err(StepError::NoPendingQuestion),
        (Position::Waiting { block_id, next, .. }, Input::Resume) => {
            Resume::Pause(block_id.clone(), next.clone())
        }
        (Position::AwaitingCallback { block_id, .. }, Input::Resume) => {
            Resume::CallbackTimeout(block_id.clone())
        }
        (_, Input::Resume) => return Err(StepError::NotPausing),
        (Position::AwaitingCallback { block_id, .. }, Input::Callback(variables)) => {
            Resume::Callback(block_id.clone(), variables)
        }
        (_, Input::Callback(_)) => return Err(StepError::NotAwaitingCallback),
        (Position::AwaitingWebhook { block_id }, Input::WebhookResult(outcome)) => {
            Resume::Webhook(block_id.clone(), outcome)
        }
        (Position::NotStarted, Input::WebhookResult(_)) => return Err(StepError::NotStarted),
        (_, Input::WebhookResult(_)) => return Err(StepError::NotAwaitingWebhook),
    };
    let mut run = Run {
        flow,
        state,
        result: StepResult::default(),
        block: None,
    };
    match resume {
        Resume::Start => run.start(),
        Resume::Answer(block_id, text) => run.answer(&block_id, text),
        Resume::Webhook(block_id, outcome) => run.webhook_result(&block_id, outcome),
        Resume::Pause(block_id, next) => {
            run.block = Some(block_id);
            run.run_from(next.as_deref());
        }
        Resume::Callback(block_id, variables) => run.callback(&block_id, Some(variables)),
        Resume::CallbackTimeout(block_id) => run.callback(&block_id, None),
    }
    Ok(run.result)
}

enum Resume {
    Start,
    Answer(String, String),
    Webhook(String, WebhookOutcome),
    Pause(String, Option<String>),
    Callback(String, Map<String, Value>),
    CallbackTimeout(String),
}

struct Run<'a> {
    flow: &'a CompiledFlow,
    state: &'a mut State,
    result: StepResult,
    /// The block being run, which what is said now comes from.
    block: Option<String>,
}

impl Run<'_> {
    fn start(&mut self) {
        let flow = self.flow.flow();
        let start = flow
            .start_block_id
            .as_deref()
            .filter(|id| !id.trim().is_empty());
        match start {
            Some(id) if !flow.blocks.is_empty() => self.run_from(Some(id)),
            // An empty draft has nothing to say: it is over, not broken.
            _ => self.end(None),
        }
    }

    fn answer(&mut self, block_id: &str, text: String) {
        self.block = Some(block_id.to_owned());
        let flow = self.flow;
        let Some(block) = flow.block(block_id) else {
            self.say(ChatMessage::VisitorMessage { text });
            return self.end(Some(missing_block(block_id)));
        };
        let pattern = block
            .validation
            .as_ref()
            .and_then(|v| v.pattern.as_deref())
            .and_then(|p| flow.pattern(p));
        // Buttons a webhook reply offered stand in for the block's own choices.
        let offered;
        let block = match &self.state.choices {
            Some(choices) => {
                offered = Block {
                    choices: Some(choices.clone()),
                    ..block.clone()
                };
                &offered
            }
            None => block,
        };
        let checked = check_answer(block, &text, pattern);
        self.say(ChatMessage::VisitorMessage { text });
        match checked {
            Err(message) => {
                self.say(ChatMessage::InvalidAnswer { text: message });
                self.state.attempts = self.state.attempts.saturating_add(1);
                if let Some(max) = block.max_attempts
                    && self.state.attempts >= max
                {
                    // An endless loop of wrong answers ends where the author said.
                    self.state.attempts = 0;
                    self.state.choices = None;
                    return self.run_from(block.on_max_attempts.as_deref());
                }
                self.ask(block);
            }
            Ok((value, choice_next)) => {
                self.state.attempts = 0;
                self.state.choices = None;
                let name = block
                    .save_answer_to
                    .as_deref()
                    .filter(|name| !name.trim().is_empty());
                if let Some(name) = name {
                    self.state.answers.insert(name.to_owned(), value.clone());
                    self.state.variables.insert(name.to_owned(), value);
                }
                self.run_from(choice_next.as_deref().or(block.next.as_deref()));
            }
        }
    }

    fn webhook_result(&mut self, block_id: &str, outcome: WebhookOutcome) {
        self.block = Some(block_id.to_owned());
        let flow = self.flow;
        let Some(block) = flow.block(block_id) else {
            return self.end(Some(missing_block(block_id)));
        };
        let mut target = block.next.as_deref();
        let mut wait: Option<u32> = None;
        match outcome {
            WebhookOutcome::Responses(instructions) => {
                let count = instructions.len();
                for (done, instruction) in instructions.into_iter().enumerate() {
                    match instruction {
                        Instruction::Text(text) => {
                            let text = render(&text, &self.state.variables);
                            self.say(ChatMessage::BotMessage { text });
                        }
                        Instruction::Set(variables) => self.state.variables.extend(variables),
                        // Later instructions still run, so a reply may say
                        // or set things after its goto; the last goto wins.
                        Instruction::Goto(id) => match flow.block(&id) {
                            Some(found) => target = Some(found.id.as_str()),
                            None => self.note(format!(
                                "The webhook reply asked to go to block \"{id}\", which does not \
                                 exist; the flow continues at the block's next."
                            )),
                        },
                        Instruction::End => {
                            let ignored = count - done - 1;
                            if ignored > 0 {
                                self.note(format!(
                                    "Ignored {ignored} webhook instruction(s) after \"end\"."
                                ));
                            }
                            return self.end(None);
                        }
                        Instruction::Unknown(description) => {
                            self.note(format!("Skipped a webhook instruction: {description}."));
                        }
                        Instruction::Choices(choices) => self.state.next_choices = Some(choices),
                        // Several waits add up, to the most one pause may last.
                        Instruction::Wait(seconds) => {
                            wait = Some(
                                wait.unwrap_or(0)
                                    .saturating_add(seconds)
                                    .min(MAX_WAIT_SECONDS),
                            );
                        }
                        Instruction::Redirect(url) => {
                            let url = render(&url, &self.state.variables);
                            self.say(ChatMessage::Redirect { url });
                        }
                    }
                }
            }
            WebhookOutcome::Variables(variables) => self.state.variables.extend(variables),
            WebhookOutcome::Failed(reason) => {
                self.note(format!("The webhook call failed: {reason}"));
            }
        }
        if let Some(seconds) = wait {
            // The reply's other instructions ran at once; the flow goes on after the pause.
            self.state.position = Position::Waiting {
                block_id: block_id.to_owned(),
                seconds,
                next: target.map(str::to_owned),
            };
            return;
        }
        self.run_from(target);
    }

    /// Goes on from a CALLBACK block: to `next` with the posted keys as variables, or to
    /// `onTimeout` when nothing came (`None`).
    fn callback(&mut self, block_id: &str, posted: Option<Map<String, Value>>) {
        self.block = Some(block_id.to_owned());
        let flow = self.flow;
        let Some(block) = flow.block(block_id) else {
            return self.end(Some(missing_block(block_id)));
        };
        match posted {
            Some(variables) => {
                self.state.variables.extend(variables);
                self.run_from(block.next.as_deref());
            }
            None => {
                self.note(format!(
                    "No callback came for block \"{block_id}\" in time; the flow goes to its \
                     onTimeout."
                ));
                self.run_from(block.on_timeout.as_deref());
            }
        }
    }

    /// Runs blocks from `first` until one waits or the conversation ends.
    fn run_from(&mut self, first: Option<&str>) {
        let flow = self.flow;
        let mut target = first;
        let mut ran = 0;
        loop {
            let Some(id) = target else {
                return self.end(None);
            };
            let Some(block) = flow.block(id) else {
                return self.end(Some(missing_block(id)));
            };
            self.block = Some(block.id.clone());
            ran += 1;
            if ran > MAX_BLOCKS_PER_STEP {
                return self.end(Some(
                    "The bot stopped: too many steps without a question.".to_owned(),
                ));
            }
            target = match block.kind {
                BlockKind::Message => {
                    if let Some(text) = &block.text {
                        let text = render(text, &self.state.variables);
                        self.say(ChatMessage::BotMessage { text });
                    }
                    block.next.as_deref()
                }
                BlockKind::Question => {
                    self.state.attempts = 0;
                    // A reply's buttons are for the next CHOICE question, whichever it is.
                    self.state.choices = if block.question_type == Some(QuestionType::Choice) {
                        self.state.next_choices.take()
                    } else {
                        None
                    };
                    self.ask(block);
                    self.state.position = Position::AwaitingAnswer {
                        block_id: block.id.clone(),
                    };
                    return;
                }
                BlockKind::Webhook => {
                    let webhook_id = block
                        .webhook_id
                        .as_deref()
                        .filter(|id| !id.trim().is_empty());
                    match webhook_id {
                        None => {
                            self.note(format!(
                                "Webhook block \"{}\" has no webhook; it was skipped.",
                                block.id
                            ));
                        }
                        Some(webhook_id) if block.is_async.unwrap_or(true) => {
                            self.result.outputs.push(Output::QueueWebhook {
                                webhook_id: webhook_id.to_owned(),
                                block_id: block.id.clone(),
                            });
                        }
                        Some(webhook_id) => {
                            self.result.outputs.push(Output::CallWebhook {
                                webhook_id: webhook_id.to_owned(),
                                block_id: block.id.clone(),
                            });
                            self.state.position = Position::AwaitingWebhook {
                                block_id: block.id.clone(),
                            };
                            return;
                        }
                    }
                    block.next.as_deref()
                }
                BlockKind::Condition => block
                    .conditions
                    .iter()
                    .flatten()
                    .find(|condition| holds(condition, &self.state.variables, flow))
                    .map(|condition| condition.next.as_str())
                    .or(block.next.as_deref()),
                BlockKind::End => return self.end(None),
                BlockKind::SetVariable => {
                    if let Some(name) = block.variable.as_deref().filter(|n| !n.trim().is_empty()) {
                        let text = render(
                            block.value.as_deref().unwrap_or_default(),
                            &self.state.variables,
                        );
                        // `42`, `true`, `{"a": 1}` are JSON; anything else is text. So is
                        // JSON decoding to a NUL (a visitor's `\u0000` typed out), which no
                        // database could then store as a variable (see `crate::nul`).
                        let value = serde_json::from_str(&text)
                            .ok()
                            .filter(|v| !holds_nul(v))
                            .unwrap_or(Value::String(text));
                        self.state.variables.insert(name.trim().to_owned(), value);
                    }
                    block.next.as_deref()
                }
                BlockKind::Split => {
                    let branches = block.branches.as_deref().unwrap_or_default();
                    match self.draw(block, branches) {
                        Some(branch) => Some(branch.next.as_str()),
                        None => {
                            return self.end(Some(format!(
                                "The bot stopped: split \"{}\" has no branch to take.",
                                block.id
                            )));
                        }
                    }
                }
                BlockKind::Redirect => {
                    let url = render(
                        block.url.as_deref().unwrap_or_default(),
                        &self.state.variables,
                    );
                    self.say(ChatMessage::Redirect { url });
                    block.next.as_deref()
                }
                BlockKind::Callback => {
                    let timeout_seconds = block
                        .timeout_seconds
                        .unwrap_or(MAX_CALLBACK_TIMEOUT_SECONDS)
                        .clamp(1, MAX_CALLBACK_TIMEOUT_SECONDS);
                    self.state.position = Position::AwaitingCallback {
                        block_id: block.id.clone(),
                        timeout_seconds,
                    };
                    return;
                }
                BlockKind::Wait => {
                    let seconds = block.seconds.unwrap_or(1).clamp(1, MAX_WAIT_SECONDS);
                    self.state.position = Position::Waiting {
                        block_id: block.id.clone(),
                        seconds,
                        next: block.next.clone(),
                    };
                    return;
                }
            };
        }
    }

    /// The branch a SPLIT takes: the one drawn before for this block, else a draw weighted by
    /// the branches' weights from the conversation's seed, recorded in the state.
    fn draw<'b>(&mut self, block: &Block, branches: &'b [Branch]) -> Option<&'b Branch> {
        if let Some(&drawn) = self.state.splits.get(&block.id) {
            return branches.get(drawn).or_else(|| branches.first());
        }
        let total: u64 = branches.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = mix(self.state.seed ^ fnv1a(&block.id)) % total;
        let index = branches.iter().position(|b| {
            let w = u64::from(b.weight);
            if point < w {
                true
            } else {
                point -= w;
                false
            }
        })?;
        self.state.splits.insert(block.id.clone(), index);
        branches.get(index)
    }

    fn ask(&mut self, block: &Block) {
        let question_type = block.question_type.unwrap_or(QuestionType::Text);
        let choices = self
            .state
            .choices
            .clone()
            .or_else(|| block.offered_choices());
        let text = render(
            block.text.as_deref().unwrap_or_default(),
            &self.state.variables,
        );
        self.say(ChatMessage::Question {
            text,
            question_type,
            choices,
        });
    }

    fn end(&mut self, error: Option<String>) {
        self.say(ChatMessage::Ended { error });
        self.state.position = Position::Ended;
    }

    fn say(&mut self, message: ChatMessage) {
        self.result.outputs.push(Output::Say(message));
        self.result.say_blocks.push(self.block.clone());
    }

    fn note(&mut self, note: String) {
        self.result.notes.push(note);
    }
}

/// SplitMix64's finaliser: spreads a seed evenly over 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a block id, so that two splits of one conversation draw independently.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
    })
}

fn missing_block(id: &str) -> String {
    format!("The bot stopped: block \"{id}\" does not exist.")
}
