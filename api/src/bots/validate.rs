//! Checking a flow before it is published: every problem at once, in a
//! deterministic order (flow-level problems, then each block in order with
//! its fields in model order, then loops by smallest block id).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::engine::model::{
    Block, BlockKind, ConditionOperator, Flow, MAX_CALLBACK_TIMEOUT_SECONDS, MAX_WAIT_SECONDS,
    QuestionType,
};

mod conditions;
mod graph;

use graph::{Graph, strongly_connected};

/// One thing wrong with a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The block concerned (possibly an empty id); `None` for the flow.
    pub block_id: Option<String>,
    /// The camelCase field concerned, like `next` or `choices[1].label`.
    pub field: String,
    /// What is wrong, for the flow's author.
    pub message: String,
}

/// Size limits a flow must keep to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most blocks in a flow.
    pub max_blocks: usize,
    /// Most characters in a block text or a choice label.
    pub max_text_len: usize,
    /// Most choices in a question.
    pub max_choices: usize,
    /// Most conditions in a condition block.
    pub max_conditions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blocks: 500,
            max_text_len: 4000,
            max_choices: 50,
            max_conditions: 50,
        }
    }
}

/// The variable names the runtime keeps for itself: the payload's `conversation`, and the
/// visitor's prefilled values.
const RESERVED_VARIABLES: [&str; 2] = ["conversation", crate::engine::state::VISITOR_VARIABLE];

/// Lists every problem of `flow`, or nothing if it can be published.
///
/// An empty flow (no blocks) is a valid draft as long as `startBlockId` is
/// absent or empty. Fields that the block's kind does not use are reported
/// as such and their content is not checked further. Empty lists and empty
/// strings count as absent for that purpose, since editors often send them.
pub fn validate_flow(
    flow: &Flow,
    webhook_exists: &dyn Fn(&str) -> bool,
    limits: &Limits,
) -> Vec<Problem> {
    let mut check = Checker {
        ids: flow.blocks.iter().map(|block| block.id.as_str()).collect(),
        webhook_exists,
        limits,
        problems: Vec::new(),
    };
    check.flow(flow);
    let mut seen = HashSet::new();
    for (position, block) in flow.blocks.iter().enumerate() {
        check.block(position, block, &mut seen);
    }
    check.loops(flow);
    check.problems
}

/// The ids of the blocks that no path from `startBlockId` reaches, in block
/// order, each once. Paths follow [`Block::targets`]: `next`, choice and
/// condition nexts, as far as the block's kind uses them.
pub fn unreachable_blocks(flow: &Flow) -> Vec<String> {
    let graph = Graph::new(flow, |_| true);
    let mut reached = vec![false; graph.nodes.len()];
    let start = flow
        .start_block_id
        .as_deref()
        .and_then(|id| graph.index.get(id));
    let mut stack: Vec<usize> = start.copied().into_iter().collect();
    while let Some(node) = stack.pop() {
        let Some(seen) = reached.get_mut(node) else {
            continue;
        };
        if !*seen {
            *seen = true;
            stack.extend(graph.edges.get(node).into_iter().flatten().copied());
        }
    }
    let mut listed = HashSet::new();
    flow.blocks
        .iter()
        .filter(|block| {
            let is_reached = graph
                .index
                .get(block.id.as_str())
                .is_some_and(|&node| reached.get(node).copied().unwrap_or(false));
            !is_reached && listed.insert(block.id.as_str())
        })
        .map(|block| block.id.clone())
        .collect()
}

struct Checker<'a> {
    ids: HashSet<&'a str>,
    webhook_exists: &'a dyn Fn(&str) -> bool,
    limits: &'a Limits,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn report(&mut self, block: Option<&Block>, field: impl Into<String>, message: String) {
        self.problems.push(Problem {
            block_id: block.map(|block| block.id.clone()),
            field: field.into(),
            message,
        });
    }

    fn flow(&mut self, flow: &Flow) {
        let count = flow.blocks.len();
        if count > self.limits.max_blocks {
            let max = self.limits.max_blocks;
            self.report(
                None,
                "blocks",
                format!("The flow has {count} blocks; at most {max} are allowed."),
            );
        }
        let start = flow
            .start_block_id
            .as_deref()
            .filter(|id| !id.trim().is_empty());
        match start {
            None if count > 0 => self.report(
                None,
                "startBlockId",
                "The flow needs a start block.".to_owned(),
            ),
            None => {}
            Some(id) if count == 0 => self.report(
                None,
                "startBlockId",
                format!("The start block \"{id}\" does not exist: the flow has no blocks."),
            ),
            Some(id) if !self.ids.contains(id) => self.report(
                None,
                "startBlockId",
                format!("The start block \"{id}\" does not exist."),
            ),
            Some(_) => {}
        }
    }

    /// Checks the block's fields in model order so problems come out in a
    /// stable, readable order.
    fn block(&mut self, position: usize, block: &'a Block, seen: &mut HashSet<&'a str>) {
        let kind = block.kind;
        if block.id.trim().is_empty() {
            let number = position + 1;
            self.report(
                Some(block),
                "id",
                format!("Block #{number} has an empty id."),
            );
        } else if !seen.insert(block.id.as_str()) {
            self.report(
                Some(block),
                "id",
                format!("The id \"{}\" is used by more than one block.", block.id),
            );
        }

        match kind {
            BlockKind::Message | BlockKind::Question => self.text(block),
            _ => self.unused_if(block, is_present(block.text.as_deref()), "text"),
        }
        if kind != BlockKind::Question {
            self.unused_if(block, block.question_type.is_some(), "questionType");
        }
        if kind == BlockKind::Question {
            self.save_answer_to(block);
            self.choices(block);
            self.answer_rules(block);
        } else {
            self.unused_if(block, block.rating_max.is_some(), "ratingMax");
            self.unused_if(block, block.validation.is_some(), "validation");
            self.unused_if(block, block.max_attempts.is_some(), "maxAttempts");
            self.unused_if(
                block,
                is_present(block.on_max_attempts.as_deref()),
                "onMaxAttempts",
            );
            self.unused_if(
                block,
                is_present(block.save_answer_to.as_deref()),
                "saveAnswerTo",
            );
            self.unused_if(block, is_listed(block.choices.as_deref()), "choices");
        }
        if kind == BlockKind::Webhook {
            self.webhook(block);
        } else {
            self.unused_if(block, is_present(block.webhook_id.as_deref()), "webhookId");
            self.unused_if(block, block.is_async.is_some(), "async");
        }
        if kind == BlockKind::Condition {
            self.conditions(block);
        } else {
            self.unused_if(block, is_listed(block.conditions.as_deref()), "conditions");
        }
        if kind == BlockKind::SetVariable {
            self.set_variable(block);
        } else {
            self.unused_if(block, is_present(block.variable.as_deref()), "variable");
            self.unused_if(block, block.value.is_some(), "value");
        }
        if kind == BlockKind::Split {
            self.branches(block);
        } else {
            self.unused_if(block, is_listed(block.branches.as_deref()), "branches");
        }
        if kind == BlockKind::Redirect {
            self.redirect(block);
        } else {
            self.unused_if(block, is_present(block.url.as_deref()), "url");
        }
        if kind == BlockKind::Wait {
            self.wait(block);
        } else {
            self.unused_if(block, block.seconds.is_some(), "seconds");
        }
        if kind == BlockKind::Callback {
            self.callback(block);
        } else {
            self.unused_if(block, block.timeout_seconds.is_some(), "timeoutSeconds");
            self.unused_if(block, is_present(block.on_timeout.as_deref()), "onTimeout");
        }
        if matches!(kind, BlockKind::End | BlockKind::Split) {
            self.unused_if(block, is_present(block.next.as_deref()), "next");
        } else if let Some(next) = &block.next {
            self.target(block, "next".to_owned(), next);
        }
    }

    fn set_variable(&mut self, block: &Block) {
        match block.variable.as_deref().map(str::trim) {
            None | Some("") => self.report(
                Some(block),
                "variable",
                "A SET_VARIABLE block needs the name of the variable it sets.".to_owned(),
            ),
            Some(name)
                if RESERVED_VARIABLES
                    .iter()
                    .any(|r| name.eq_ignore_ascii_case(r)) =>
            {
                self.report(
                    Some(block),
                    "variable",
                    format!("\"{name}\" is reserved; choose another variable name."),
                );
            }
            Some(name) if !is_identifier(name) => self.report(
                Some(block),
                "variable",
                format!(
                    "\"{name}\" is not a valid variable name: use letters, digits and \
                     underscores, and do not start with a digit."
                ),
            ),
            Some(_) => {}
        }
        match &block.value {
            None => self.report(
                Some(block),
                "value",
                "A SET_VARIABLE block needs a value (a template; JSON such as 42 or true is \
                 stored as JSON)."
                    .to_owned(),
            ),
            Some(value) => self.too_long(block, "value".to_owned(), value),
        }
    }

    fn branches(&mut self, block: &Block) {
        let branches = block.branches.as_deref().unwrap_or_default();
        if branches.len() < 2 {
            self.report(
                Some(block),
                "branches",
                "A SPLIT block needs at least two branches.".to_owned(),
            );
        }
        if branches.len() > self.limits.max_choices {
            let (count, max) = (branches.len(), self.limits.max_choices);
            self.report(
                Some(block),
                "branches",
                format!("The split has {count} branches; at most {max} are allowed."),
            );
        }
        for (i, branch) in branches.iter().enumerate() {
            if branch.weight == 0 || branch.weight > 1_000_000 {
                self.report(
                    Some(block),
                    format!("branches[{i}].weight"),
                    "A branch's weight must be from 1 to 1,000,000.".to_owned(),
                );
            }
            self.target(block, format!("branches[{i}].next"), &branch.next);
        }
    }

    fn wait(&mut self, block: &Block) {
        if !block
            .seconds
            .is_some_and(|s| (1..=MAX_WAIT_SECONDS).contains(&s))
        {
            self.report(
                Some(block),
                "seconds",
                format!("A WAIT block needs seconds, from 1 to {MAX_WAIT_SECONDS}."),
            );
        }
    }

    fn callback(&mut self, block: &Block) {
        if !block
            .timeout_seconds
            .is_some_and(|s| (1..=MAX_CALLBACK_TIMEOUT_SECONDS).contains(&s))
        {
            self.report(
                Some(block),
                "timeoutSeconds",
                format!(
                    "A CALLBACK block needs timeoutSeconds, from 1 to \
                     {MAX_CALLBACK_TIMEOUT_SECONDS} (a day)."
                ),
            );
        }
        match block.on_timeout.as_deref() {
            Some(target) if !target.is_empty() => {
                self.target(block, "onTimeout".to_owned(), target);
            }
            _ => self.report(
                Some(block),
                "onTimeout",
                "A CALLBACK block needs onTimeout: the block to go to when no callback comes in \
                 time."
                    .to_owned(),
            ),
        }
    }

    fn redirect(&mut self, block: &Block) {
        let url = block.url.as_deref().map(str::trim).unwrap_or_default();
        let lower = url.to_ascii_lowercase();
        // A template may fill the rest; the scheme must be a web one from the start.
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            self.report(
                Some(block),
                "url",
                "A REDIRECT block needs a URL starting with https:// or http://.".to_owned(),
            );
        } else {
            self.too_long(block, "url".to_owned(), url);
        }
    }

    fn unused_if(&mut self, block: &Block, present: bool, field: &str) {
        if present {
            let kind = kind_name(block.kind);
            self.report(
                Some(block),
                field,
                format!("A {kind} block does not use {field}; remove it."),
            );
        }
    }

    fn target(&mut self, block: &Block, field: String, target: &str) {
        if target.trim().is_empty() {
            self.report(
                Some(block),
                field,
                "The next block id is empty; leave it out to end the conversation.".to_owned(),
            );
        } else if !self.ids.contains(target) {
            self.report(
                Some(block),
                field,
                format!("The next block \"{target}\" does not exist."),
            );
        }
    }

    fn too_long(&mut self, block: &Block, field: String, text: &str) {
        let length = text.chars().count();
        let max = self.limits.max_text_len;
        if length > max {
            self.report(
                Some(block),
                field,
                format!("The text is {length} characters long; at most {max} are allowed."),
            );
        }
    }

    fn text(&mut self, block: &Block) {
        match block.text.as_deref() {
            Some(text) if !text.trim().is_empty() => self.too_long(block, "text".to_owned(), text),
            _ => {
                let what = match block.kind {
                    BlockKind::Question => "A question block needs a text.",
                    _ => "A message block needs a text.",
                };
                self.report(Some(block), "text", what.to_owned());
            }
        }
    }

    fn save_answer_to(&mut self, block: &Block) {
        let Some(name) = block.save_answer_to.as_deref() else {
            return;
        };
        let message = if name.trim().is_empty() {
            "The variable name for the answer is empty; leave it out to not store the answer."
                .to_owned()
        } else if RESERVED_VARIABLES
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r))
        {
            format!("\"{name}\" is reserved; choose another variable name.")
        } else if !is_identifier(name) {
            format!(
                "\"{name}\" is not a valid variable name: use letters, digits and \
                 underscores, and do not start with a digit."
            )
        } else {
            return;
        };
        self.report(Some(block), "saveAnswerTo", message);
    }

    /// A QUESTION's rating scale, validation rules and attempt limit.
    fn answer_rules(&mut self, block: &Block) {
        let question_type = block.question_type.unwrap_or(QuestionType::Text);
        let type_name = question_type_name(question_type);
        match block.rating_max {
            Some(_) if question_type != QuestionType::Rating => self.report(
                Some(block),
                "ratingMax",
                format!("Only RATING questions have ratingMax; this one is {type_name}."),
            ),
            Some(max) if !(2..=10).contains(&max) => self.report(
                Some(block),
                "ratingMax",
                format!("ratingMax must be from 2 to 10, not {max}."),
            ),
            _ => {}
        }
        if let Some(rules) = &block.validation {
            let numeric = matches!(question_type, QuestionType::Number | QuestionType::Rating);
            let textual = matches!(
                question_type,
                QuestionType::Text
                    | QuestionType::Email
                    | QuestionType::Phone
                    | QuestionType::Url
                    | QuestionType::Number
            );
            if (rules.min.is_some() || rules.max.is_some()) && !numeric {
                self.report(
                    Some(block),
                    "validation.min",
                    format!(
                        "min and max apply to NUMBER and RATING questions; this one is {type_name}."
                    ),
                );
            }
            let has_text_rules =
                rules.min_length.is_some() || rules.max_length.is_some() || rules.pattern.is_some();
            if has_text_rules && !textual {
                self.report(
                    Some(block),
                    "validation.pattern",
                    format!("minLength, maxLength and pattern apply to typed answers; {type_name} answers are picked."),
                );
            }
            if let (Some(low), Some(high)) = (rules.min_length, rules.max_length)
                && low > high
            {
                self.report(
                    Some(block),
                    "validation.minLength",
                    format!("minLength ({low}) is more than maxLength ({high})."),
                );
            }
            let number = |n: &Option<serde_json::Number>| n.as_ref().and_then(|n| n.as_f64());
            if let (Some(low), Some(high)) = (number(&rules.min), number(&rules.max))
                && low > high
            {
                self.report(
                    Some(block),
                    "validation.min",
                    format!("min ({low}) is more than max ({high})."),
                );
            }
            if let Some(pattern) = &rules.pattern
                && let Err(why) = crate::engine::pattern::compile(pattern)
            {
                self.report(Some(block), "validation.pattern", why);
            }
            if let Some(message) = &rules.message {
                self.too_long(block, "validation.message".to_owned(), message);
            }
        }
        match (block.max_attempts, block.on_max_attempts.as_deref()) {
            (Some(0), _) => self.report(
                Some(block),
                "maxAttempts",
                "maxAttempts must be at least 1.".to_owned(),
            ),
            (Some(_), None) => self.report(
                Some(block),
                "onMaxAttempts",
                "With maxAttempts, say where the flow goes after the last wrong answer.".to_owned(),
            ),
            (Some(_), Some(target)) => self.target(block, "onMaxAttempts".to_owned(), target),
            (None, Some(target)) if !target.trim().is_empty() => self.report(
                Some(block),
                "onMaxAttempts",
                "onMaxAttempts needs maxAttempts.".to_owned(),
            ),
            _ => {}
        }
    }

    fn choices(&mut self, block: &Block) {
        let question_type = block.question_type.unwrap_or(QuestionType::Text);
        let choices = block.choices.as_deref().unwrap_or_default();
        let multi = question_type == QuestionType::MultiChoice;
        if question_type != QuestionType::Choice && !multi {
            if !choices.is_empty() {
                let type_name = question_type_name(question_type);
                self.report(
                    Some(block),
                    "choices",
                    format!(
                        "Only CHOICE and MULTI_CHOICE questions have choices; this one is {type_name}."
                    ),
                );
            }
            return;
        }
        if choices.is_empty() {
            let type_name = question_type_name(question_type);
            self.report(
                Some(block),
                "choices",
                format!("A {type_name} question needs at least one choice."),
            );
        }
        if choices.len() > self.limits.max_choices {
            let (count, max) = (choices.len(), self.limits.max_choices);
            self.report(
                Some(block),
                "choices",
                format!("The question has {count} choices; at most {max} are allowed."),
            );
        }
        let mut labels = HashSet::new();
        for (i, choice) in choices.iter().enumerate() {
            let label = choice.label.trim();
            if label.is_empty() {
                self.report(
                    Some(block),
                    format!("choices[{i}].label"),
                    "Every choice needs a label.".to_owned(),
                );
            } else if !labels.insert(label.to_lowercase()) {
                self.report(
                    Some(block),
                    format!("choices[{i}].label"),
                    format!("The label \"{label}\" is used by more than one choice."),
                );
            } else {
                self.too_long(block, format!("choices[{i}].label"), &choice.label);
            }
            match &choice.next {
                Some(_) if multi => self.report(
                    Some(block),
                    format!("choices[{i}].next"),
                    "A MULTI_CHOICE question goes to its block's next whatever is picked; \
                     remove the choice's next."
                        .to_owned(),
                ),
                Some(next) => self.target(block, format!("choices[{i}].next"), next),
                None => {}
            }
        }
    }

    fn webhook(&mut self, block: &Block) {
        match block
            .webhook_id
            .as_deref()
            .filter(|id| !id.trim().is_empty())
        {
            None => self.report(
                Some(block),
                "webhookId",
                "A webhook block needs a webhook.".to_owned(),
            ),
            Some(id) if !(self.webhook_exists)(id) => self.report(
                Some(block),
                "webhookId",
                format!("The webhook \"{id}\" does not exist."),
            ),
            Some(_) => {}
        }
    }

    /// Reports loops a visitor could never leave. Questions are taken out of
    /// the graph first, so a loop that bypasses the question of a larger
    /// loop is found too; each strongly connected component left that still
    /// has a cycle is one problem.
    fn loops(&mut self, flow: &'a Flow) {
        let graph = Graph::new(flow, |block| block.kind != BlockKind::Question);
        let mut loops: Vec<Vec<&str>> = strongly_connected(&graph.edges)
            .into_iter()
            .filter(|component| match component.as_slice() {
                [single] => graph.edges.get(*single).is_some_and(|e| e.contains(single)),
                _ => true,
            })
            .map(|component| {
                let mut ids: Vec<&str> = component
                    .iter()
                    .filter_map(|&node| graph.nodes.get(node))
                    .map(|block| block.id.as_str())
                    .collect();
                ids.sort_unstable();
                ids
            })
            .collect();
        loops.sort_unstable();
        for ids in loops {
            let Some(first) = ids.first() else {
                continue;
            };
            let Some(block) = graph.index.get(first).and_then(|&n| graph.nodes.get(n)) else {
                continue;
            };
            let message = match ids.as_slice() {
                [only] => format!(
                    "The block \"{only}\" leads back to itself with no question in between, \
                     so a visitor could never leave it."
                ),
                _ => {
                    let names: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
                    format!(
                        "The blocks {} form a loop with no question, so a visitor could never \
                         leave it.",
                        names.join(", ")
                    )
                }
            };
            self.report(Some(block), "next", message);
        }
    }
}

fn is_present(field: Option<&str>) -> bool {
    field.is_some_and(|value| !value.is_empty())
}

fn is_listed<T>(field: Option<&[T]>) -> bool {
    field.is_some_and(|items| !items.is_empty())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_number(text: &str) -> bool {
    let text = text.trim();
    text.chars().any(|c| c.is_ascii_digit()) && text.parse::<f64>().is_ok_and(f64::is_finite)
}

fn kind_name(kind: BlockKind) -> &'static str {
    match kind {
        BlockKind::Message => "MESSAGE",
        BlockKind::Question => "QUESTION",
        BlockKind::Webhook => "WEBHOOK",
        BlockKind::Condition => "CONDITION",
        BlockKind::End => "END",
        BlockKind::SetVariable => "SET_VARIABLE",
        BlockKind::Split => "SPLIT",
        BlockKind::Redirect => "REDIRECT",
        BlockKind::Wait => "WAIT",
        BlockKind::Callback => "CALLBACK",
    }
}

fn question_type_name(question_type: QuestionType) -> &'static str {
    match question_type {
        QuestionType::Text => "TEXT",
        QuestionType::Email => "EMAIL",
        QuestionType::Phone => "PHONE",
        QuestionType::Number => "NUMBER",
        QuestionType::Choice => "CHOICE",
        QuestionType::Date => "DATE",
        QuestionType::Url => "URL",
        QuestionType::Rating => "RATING",
        QuestionType::MultiChoice => "MULTI_CHOICE",
        QuestionType::YesNo => "YES_NO",
    }
}

fn operator_name(operator: ConditionOperator) -> &'static str {
    match operator {
        ConditionOperator::Equals => "EQUALS",
        ConditionOperator::NotEquals => "NOT_EQUALS",
        ConditionOperator::Contains => "CONTAINS",
        ConditionOperator::GreaterThan => "GREATER_THAN",
        ConditionOperator::LessThan => "LESS_THAN",
        ConditionOperator::IsSet => "IS_SET",
        ConditionOperator::IsNotSet => "IS_NOT_SET",
        ConditionOperator::IsEmpty => "IS_EMPTY",
        ConditionOperator::Matches => "MATCHES",
    }
}

#[cfg(test)]
mod tests;
