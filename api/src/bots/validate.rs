//! Checking a flow before it is published: every problem at once, in a
//! deterministic order (flow-level problems, then each block in order with
//! its fields in model order, then loops by smallest block id).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::engine::model::{Block, BlockKind, ConditionOperator, Flow, QuestionType};

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

    fn conditions(&mut self, block: &Block) {
        let conditions = block.conditions.as_deref().unwrap_or_default();
        if conditions.is_empty() {
            self.report(
                Some(block),
                "conditions",
                "A condition block needs at least one condition.".to_owned(),
            );
        }
        if conditions.len() > self.limits.max_conditions {
            let (count, max) = (conditions.len(), self.limits.max_conditions);
            self.report(
                Some(block),
                "conditions",
                format!("The block has {count} conditions; at most {max} are allowed."),
            );
        }
        for (i, condition) in conditions.iter().enumerate() {
            if condition.variable.trim().is_empty() {
                self.report(
                    Some(block),
                    format!("conditions[{i}].variable"),
                    "Every condition needs a variable.".to_owned(),
                );
            }
            let operator = condition.operator;
            let needs_value = !matches!(
                operator,
                ConditionOperator::IsSet | ConditionOperator::IsNotSet | ConditionOperator::IsEmpty
            );
            if operator == ConditionOperator::Matches
                && let Some(pattern) = condition.value.as_deref()
                && let Err(why) = crate::engine::pattern::compile(pattern)
            {
                self.report(Some(block), format!("conditions[{i}].value"), why);
            }
            let numeric = matches!(
                operator,
                ConditionOperator::GreaterThan | ConditionOperator::LessThan
            );
            let operator_name = operator_name(operator);
            match condition.value.as_deref() {
                None if needs_value => self.report(
                    Some(block),
                    format!("conditions[{i}].value"),
                    format!("A {operator_name} condition needs a value."),
                ),
                // Such a condition could never hold: the runtime compares
                // numbers only.
                Some(value) if numeric && !is_number(value) => self.report(
                    Some(block),
                    format!("conditions[{i}].value"),
                    format!("{operator_name} compares numbers, but \"{value}\" is not a number."),
                ),
                _ => {}
            }
            self.target(block, format!("conditions[{i}].next"), &condition.next);
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

/// The blocks as a graph: one node per id (the first block wins, as at run
/// time), edges to every existing target.
struct Graph<'a> {
    nodes: Vec<&'a Block>,
    index: HashMap<&'a str, usize>,
    edges: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    fn new(flow: &'a Flow, include: impl Fn(&Block) -> bool) -> Self {
        let mut nodes = Vec::new();
        let mut index = HashMap::new();
        let mut taken = HashSet::new();
        for block in &flow.blocks {
            // A duplicate id must not let a later block stand in for the
            // first one, even when the first is left out.
            if taken.insert(block.id.as_str()) && include(block) {
                index.insert(block.id.as_str(), nodes.len());
                nodes.push(block);
            }
        }
        let edges = nodes
            .iter()
            .map(|block| {
                let mut targets: Vec<usize> = block
                    .targets()
                    .filter_map(|target| index.get(target).copied())
                    .collect();
                targets.sort_unstable();
                targets.dedup();
                targets
            })
            .collect();
        Self {
            nodes,
            index,
            edges,
        }
    }
}

/// Tarjan's algorithm without recursion, so a long chain of blocks cannot
/// overflow the stack.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNVISITED: usize = usize::MAX;
    let count = edges.len();
    let mut order = vec![UNVISITED; count];
    let mut low = vec![0; count];
    let mut on_stack = vec![false; count];
    let mut stack = Vec::new();
    let mut next_order = 0;
    let mut components = Vec::new();
    // Each frame is a node and how many of its edges were followed.
    let mut frames: Vec<(usize, usize)> = Vec::new();
    for root in 0..count {
        if order[root] != UNVISITED {
            continue;
        }
        order[root] = next_order;
        low[root] = next_order;
        next_order += 1;
        stack.push(root);
        on_stack[root] = true;
        frames.push((root, 0));
        while let Some(frame) = frames.last_mut() {
            let node = frame.0;
            if let Some(&target) = edges[node].get(frame.1) {
                frame.1 += 1;
                if order[target] == UNVISITED {
                    order[target] = next_order;
                    low[target] = next_order;
                    next_order += 1;
                    stack.push(target);
                    on_stack[target] = true;
                    frames.push((target, 0));
                } else if on_stack[target] {
                    low[node] = low[node].min(order[target]);
                }
                continue;
            }
            frames.pop();
            if let Some(&(parent, _)) = frames.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == order[node] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
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
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::model::{Choice, Condition};
    use crate::engine::proptests::{arb_flow, arb_inputs, arb_prefilled, arb_shaped_flow, drive};
    use crate::engine::{ChatMessage, CompiledFlow, Output};

    fn flow(start: &str, blocks: Vec<Block>) -> Flow {
        Flow {
            start_block_id: Some(start.to_owned()),
            blocks,
        }
    }

    fn check(flow: &Flow) -> Vec<Problem> {
        validate_flow(flow, &|id| id == "wh_1", &Limits::default())
    }

    /// The (block, field) pairs of the problems, for compact assertions.
    fn spots(problems: &[Problem]) -> Vec<(Option<&str>, &str)> {
        problems
            .iter()
            .map(|p| (p.block_id.as_deref(), p.field.as_str()))
            .collect()
    }

    fn spot(problem: &Problem) -> Vec<(Option<&str>, &str)> {
        spots(std::slice::from_ref(problem))
    }

    fn only_problem(flow: &Flow) -> Problem {
        let mut problems = check(flow);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems.remove(0)
    }

    fn message(id: &str, next: Option<&str>) -> Block {
        Block {
            text: Some(format!("I am {id}")),
            next: next.map(str::to_owned),
            ..Block::new(id, BlockKind::Message)
        }
    }

    fn question(id: &str, next: Option<&str>) -> Block {
        Block {
            text: Some("Name?".into()),
            save_answer_to: Some("name".into()),
            next: next.map(str::to_owned),
            ..Block::new(id, BlockKind::Question)
        }
    }

    fn choice(label: &str, next: Option<&str>) -> Choice {
        Choice {
            label: label.into(),
            value: None,
            next: next.map(str::to_owned),
        }
    }

    fn choice_question(id: &str, choices: Vec<Choice>) -> Block {
        Block {
            question_type: Some(QuestionType::Choice),
            choices: Some(choices),
            ..question(id, None)
        }
    }

    fn condition(variable: &str, operator: ConditionOperator, value: Option<&str>) -> Condition {
        Condition {
            variable: variable.into(),
            operator,
            value: value.map(str::to_owned),
            next: "end".into(),
        }
    }

    fn condition_block(conditions: Vec<Condition>) -> Block {
        Block {
            conditions: Some(conditions),
            ..Block::new("c", BlockKind::Condition)
        }
    }

    fn with_end(start: &str, mut blocks: Vec<Block>) -> Flow {
        blocks.push(Block::new("end", BlockKind::End));
        flow(start, blocks)
    }

    fn seed_flow() -> Flow {
        flow(
            "hello",
            vec![
                message("hello", Some("email")),
                Block {
                    question_type: Some(QuestionType::Email),
                    save_answer_to: Some("email".into()),
                    ..question("email", Some("phone"))
                },
                Block {
                    question_type: Some(QuestionType::Phone),
                    save_answer_to: Some("phone_number".into()),
                    ..question("phone", Some("notify"))
                },
                Block {
                    webhook_id: Some("wh_1".into()),
                    is_async: Some(true),
                    next: Some("bye".into()),
                    ..Block::new("notify", BlockKind::Webhook)
                },
                Block::new("bye", BlockKind::End),
            ],
        )
    }

    #[test]
    fn the_seed_flow_is_valid() {
        assert_eq!(check(&seed_flow()), []);
        assert_eq!(unreachable_blocks(&seed_flow()), Vec::<String>::new());
    }

    #[test]
    fn an_empty_flow_is_a_valid_draft() {
        assert_eq!(check(&Flow::default()), []);
        assert_eq!(check(&flow("", vec![])), []);
    }

    #[test]
    fn an_empty_flow_with_a_start_block_is_reported() {
        let problem = only_problem(&flow("hello", vec![]));
        assert_eq!(spot(&problem), [(None, "startBlockId")]);
        assert!(problem.message.contains("no blocks"), "{}", problem.message);
    }

    #[test]
    fn too_many_blocks_are_reported() {
        let limits = Limits {
            max_blocks: 2,
            ..Limits::default()
        };
        let flow = with_end(
            "a",
            vec![message("a", Some("b")), message("b", Some("end"))],
        );
        let problems = validate_flow(&flow, &|_| true, &limits);
        assert_eq!(spots(&problems), [(None, "blocks")]);
        assert_eq!(
            problems[0].message,
            "The flow has 3 blocks; at most 2 are allowed."
        );
    }

    #[test]
    fn a_missing_start_block_id_is_reported() {
        for start in [None, Some(String::new()), Some("  ".to_owned())] {
            let flow = Flow {
                start_block_id: start,
                blocks: vec![Block::new("end", BlockKind::End)],
            };
            let problem = only_problem(&flow);
            assert_eq!(problem.field, "startBlockId");
            assert_eq!(problem.message, "The flow needs a start block.");
        }
    }

    #[test]
    fn a_start_block_that_does_not_exist_is_reported() {
        let problem = only_problem(&with_end("ghost", vec![]));
        assert_eq!(spot(&problem), [(None, "startBlockId")]);
        assert_eq!(problem.message, "The start block \"ghost\" does not exist.");
    }

    #[test]
    fn an_empty_block_id_is_reported() {
        let problems = check(&with_end("end", vec![Block::new(" ", BlockKind::End)]));
        assert_eq!(spots(&problems), [(Some(" "), "id")]);
        assert_eq!(problems[0].message, "Block #1 has an empty id.");
    }

    #[test]
    fn a_duplicate_block_id_is_reported_on_the_later_block() {
        let flow = with_end("end", vec![Block::new("end", BlockKind::End)]);
        let problems = check(&flow);
        assert_eq!(spots(&problems), [(Some("end"), "id")]);
        assert_eq!(
            problems[0].message,
            "The id \"end\" is used by more than one block."
        );
    }

    #[test]
    fn a_next_to_a_missing_block_is_reported() {
        let problem = only_problem(&with_end("a", vec![message("a", Some("ghost"))]));
        assert_eq!(spot(&problem), [(Some("a"), "next")]);
        assert_eq!(problem.message, "The next block \"ghost\" does not exist.");
    }

    #[test]
    fn an_empty_next_is_reported() {
        let problem = only_problem(&with_end("a", vec![message("a", Some(""))]));
        assert_eq!(spot(&problem), [(Some("a"), "next")]);
        assert!(problem.message.contains("empty"), "{}", problem.message);
    }

    #[test]
    fn a_choice_next_to_a_missing_block_is_reported() {
        let q = choice_question(
            "q",
            vec![choice("A", Some("end")), choice("B", Some("ghost"))],
        );
        let problem = only_problem(&with_end("q", vec![q]));
        assert_eq!(spot(&problem), [(Some("q"), "choices[1].next")]);
        assert!(problem.message.contains("ghost"));
    }

    #[test]
    fn a_condition_next_to_a_missing_block_is_reported() {
        let mut broken = condition("v", ConditionOperator::IsSet, None);
        broken.next = "ghost".into();
        let block = condition_block(vec![condition("v", ConditionOperator::IsSet, None), broken]);
        let problem = only_problem(&with_end("c", vec![block]));
        assert_eq!(spot(&problem), [(Some("c"), "conditions[1].next")]);
        assert!(problem.message.contains("ghost"));
    }

    #[test]
    fn a_message_without_text_is_reported() {
        for text in [None, Some(" \n".to_owned())] {
            let block = Block {
                text,
                ..message("a", Some("end"))
            };
            let problem = only_problem(&with_end("a", vec![block]));
            assert_eq!(spot(&problem), [(Some("a"), "text")]);
            assert_eq!(problem.message, "A message block needs a text.");
        }
    }

    #[test]
    fn a_question_without_text_is_reported() {
        let block = Block {
            text: None,
            ..question("q", Some("end"))
        };
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(spot(&problem), [(Some("q"), "text")]);
        assert_eq!(problem.message, "A question block needs a text.");
    }

    #[test]
    fn choices_on_a_non_choice_question_are_reported() {
        let block = Block {
            question_type: Some(QuestionType::Email),
            choices: Some(vec![choice("A", None)]),
            ..question("q", None)
        };
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(spot(&problem), [(Some("q"), "choices")]);
        assert!(problem.message.contains("EMAIL"), "{}", problem.message);
    }

    #[test]
    fn a_choice_question_without_choices_is_reported() {
        for choices in [None, Some(vec![])] {
            let block = Block {
                question_type: Some(QuestionType::Choice),
                choices,
                ..question("q", None)
            };
            let problem = only_problem(&with_end("q", vec![block]));
            assert_eq!(spot(&problem), [(Some("q"), "choices")]);
            assert_eq!(
                problem.message,
                "A CHOICE question needs at least one choice."
            );
        }
    }

    #[test]
    fn too_many_choices_are_reported() {
        let choices = (0..51).map(|i| choice(&format!("c{i}"), None)).collect();
        let problem = only_problem(&with_end("q", vec![choice_question("q", choices)]));
        assert_eq!(spot(&problem), [(Some("q"), "choices")]);
        assert!(problem.message.contains("51"), "{}", problem.message);
    }

    #[test]
    fn a_choice_with_a_blank_label_is_reported() {
        let block = choice_question("q", vec![choice("A", None), choice("  ", None)]);
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(spot(&problem), [(Some("q"), "choices[1].label")]);
        assert_eq!(problem.message, "Every choice needs a label.");
    }

    #[test]
    fn duplicate_choice_labels_are_reported_case_insensitively() {
        let block = choice_question(
            "q",
            vec![
                choice("Yes", None),
                choice("No", None),
                choice(" yes", None),
            ],
        );
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(spot(&problem), [(Some("q"), "choices[2].label")]);
        assert!(problem.message.contains("more than one choice"));
    }

    #[test]
    fn a_blank_save_answer_to_is_reported() {
        let block = Block {
            save_answer_to: Some(" ".into()),
            ..question("q", None)
        };
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(spot(&problem), [(Some("q"), "saveAnswerTo")]);
        assert!(problem.message.contains("empty"), "{}", problem.message);
    }

    #[test]
    fn a_reserved_save_answer_to_is_reported() {
        for name in ["conversation", "Conversation", "visitor"] {
            let block = Block {
                save_answer_to: Some(name.into()),
                ..question("q", None)
            };
            let problem = only_problem(&with_end("q", vec![block]));
            assert_eq!(problem.field, "saveAnswerTo");
            assert!(problem.message.contains("reserved"), "{}", problem.message);
        }
    }

    #[test]
    fn a_save_answer_to_that_is_not_an_identifier_is_reported() {
        for name in ["1st", "first-name", "first name", "prénom", " name", "a.b"] {
            let block = Block {
                save_answer_to: Some(name.into()),
                ..question("q", None)
            };
            let problem = only_problem(&with_end("q", vec![block]));
            assert_eq!(problem.field, "saveAnswerTo", "{name}");
            assert!(problem.message.contains("not a valid variable name"));
        }
    }

    #[test]
    fn identifiers_with_letters_digits_and_underscores_are_valid_names() {
        for name in ["name", "_private", "phone_number", "Q2", "conversation_id"] {
            let block = Block {
                save_answer_to: Some(name.into()),
                ..question("q", None)
            };
            assert_eq!(check(&with_end("q", vec![block])), [], "{name}");
        }
    }

    #[test]
    fn a_webhook_without_webhook_id_is_reported() {
        for webhook_id in [None, Some(String::new())] {
            let block = Block {
                webhook_id,
                ..Block::new("w", BlockKind::Webhook)
            };
            let problem = only_problem(&with_end("w", vec![block]));
            assert_eq!(spot(&problem), [(Some("w"), "webhookId")]);
            assert_eq!(problem.message, "A webhook block needs a webhook.");
        }
    }

    #[test]
    fn a_webhook_that_does_not_exist_is_reported() {
        let block = Block {
            webhook_id: Some("wh_gone".into()),
            ..Block::new("w", BlockKind::Webhook)
        };
        let problem = only_problem(&with_end("w", vec![block]));
        assert_eq!(spot(&problem), [(Some("w"), "webhookId")]);
        assert_eq!(problem.message, "The webhook \"wh_gone\" does not exist.");
    }

    #[test]
    fn a_condition_block_without_conditions_is_reported() {
        for conditions in [None, Some(vec![])] {
            let block = Block {
                conditions,
                ..Block::new("c", BlockKind::Condition)
            };
            let problem = only_problem(&with_end("c", vec![block]));
            assert_eq!(spot(&problem), [(Some("c"), "conditions")]);
            assert_eq!(
                problem.message,
                "A condition block needs at least one condition."
            );
        }
    }

    #[test]
    fn too_many_conditions_are_reported() {
        let conditions = (0..51)
            .map(|_| condition("v", ConditionOperator::IsSet, None))
            .collect();
        let problem = only_problem(&with_end("c", vec![condition_block(conditions)]));
        assert_eq!(spot(&problem), [(Some("c"), "conditions")]);
        assert!(problem.message.contains("51"), "{}", problem.message);
    }

    #[test]
    fn a_condition_with_an_empty_variable_is_reported() {
        let block = condition_block(vec![condition(" ", ConditionOperator::IsSet, None)]);
        let problem = only_problem(&with_end("c", vec![block]));
        assert_eq!(spot(&problem), [(Some("c"), "conditions[0].variable")]);
        assert_eq!(problem.message, "Every condition needs a variable.");
    }

    #[test]
    fn a_condition_without_value_is_reported_unless_it_tests_presence() {
        use ConditionOperator::*;
        for operator in [Equals, NotEquals, Contains, GreaterThan, LessThan] {
            let block = condition_block(vec![condition("v", operator, None)]);
            let problem = only_problem(&with_end("c", vec![block]));
            assert_eq!(spot(&problem), [(Some("c"), "conditions[0].value")]);
            assert!(problem.message.contains("needs a value"));
        }
        for operator in [IsSet, IsNotSet] {
            let block = condition_block(vec![condition("v", operator, None)]);
            assert_eq!(check(&with_end("c", vec![block])), []);
        }
    }

    #[test]
    fn a_numeric_condition_with_a_non_number_value_is_reported() {
        let block = condition_block(vec![
            condition("v", ConditionOperator::GreaterThan, Some("10")),
            condition("v", ConditionOperator::LessThan, Some("ten")),
        ]);
        let problem = only_problem(&with_end("c", vec![block]));
        assert_eq!(spot(&problem), [(Some("c"), "conditions[1].value")]);
        assert_eq!(
            problem.message,
            "LESS_THAN compares numbers, but \"ten\" is not a number."
        );
    }

    #[test]
    fn fields_the_kind_does_not_use_are_reported() {
        let message_block = Block {
            question_type: Some(QuestionType::Text),
            save_answer_to: Some("x".into()),
            choices: Some(vec![choice("A", None)]),
            webhook_id: Some("wh_1".into()),
            is_async: Some(true),
            conditions: Some(vec![condition("v", ConditionOperator::IsSet, None)]),
            ..message("m", Some("q"))
        };
        let question_block = Block {
            webhook_id: Some("wh_1".into()),
            ..question("q", Some("w"))
        };
        let webhook_block = Block {
            text: Some("hi".into()),
            webhook_id: Some("wh_1".into()),
            conditions: Some(vec![condition("v", ConditionOperator::IsSet, None)]),
            next: Some("c".into()),
            ..Block::new("w", BlockKind::Webhook)
        };
        let condition_block = Block {
            is_async: Some(false),
            next: Some("end".into()),
            ..condition_block(vec![condition("v", ConditionOperator::IsSet, None)])
        };
        let end_block = Block {
            text: Some("bye".into()),
            next: Some("m".into()),
            ..Block::new("end", BlockKind::End)
        };
        let flow = flow(
            "m",
            vec![
                message_block,
                question_block,
                webhook_block,
                condition_block,
                end_block,
            ],
        );
        let problems = check(&flow);
        assert_eq!(
            spots(&problems),
            [
                (Some("m"), "questionType"),
                (Some("m"), "saveAnswerTo"),
                (Some("m"), "choices"),
                (Some("m"), "webhookId"),
                (Some("m"), "async"),
                (Some("m"), "conditions"),
                (Some("q"), "webhookId"),
                (Some("w"), "text"),
                (Some("w"), "conditions"),
                (Some("c"), "async"),
                (Some("end"), "text"),
                (Some("end"), "next"),
            ]
        );
        // The END block's unused `next` back to "m" is no loop: the engine
        // never follows it.
        assert_eq!(
            problems[0].message,
            "A MESSAGE block does not use questionType; remove it."
        );
    }

    #[test]
    fn empty_unused_fields_are_not_reported() {
        let block = Block {
            save_answer_to: Some(String::new()),
            choices: Some(vec![]),
            webhook_id: Some(String::new()),
            conditions: Some(vec![]),
            ..message("m", Some("end"))
        };
        let end = Block {
            text: Some(String::new()),
            next: Some(String::new()),
            ..Block::new("end", BlockKind::End)
        };
        assert_eq!(check(&flow("m", vec![block, end])), []);
    }

    #[test]
    fn a_text_longer_than_the_limit_is_reported() {
        let limits = Limits {
            max_text_len: 5,
            ..Limits::default()
        };
        let long_message = Block {
            text: Some("ééééé!".into()),
            ..message("m", Some("q"))
        };
        let short_message = Block {
            text: Some("ééééé".into()),
            ..message("n", Some("q"))
        };
        let long_label = Block {
            text: Some("Pick".into()),
            ..choice_question("q", vec![choice("Fine", None), choice("Too long", None)])
        };
        let flow = with_end("m", vec![long_message, short_message, long_label]);
        let problems = validate_flow(&flow, &|_| true, &limits);
        assert_eq!(
            spots(&problems),
            [(Some("m"), "text"), (Some("q"), "choices[1].label")]
        );
        assert_eq!(
            problems[0].message,
            "The text is 6 characters long; at most 5 are allowed."
        );
    }

    #[test]
    fn a_loop_without_a_question_is_reported_once_on_its_smallest_block() {
        let flow = with_end(
            "c",
            vec![
                message("c", Some("b")),
                message("b", Some("d")),
                Block {
                    conditions: Some(vec![Condition {
                        next: "end".into(),
                        ..condition("v", ConditionOperator::IsSet, None)
                    }]),
                    next: Some("b".into()),
                    ..Block::new("d", BlockKind::Condition)
                },
            ],
        );
        let problems = check(&flow);
        assert_eq!(spots(&problems), [(Some("b"), "next")]);
        assert_eq!(
            problems[0].message,
            "The blocks \"b\", \"d\" form a loop with no question, so a visitor could never leave it."
        );
    }

    #[test]
    fn a_block_leading_to_itself_is_reported() {
        let problems = check(&flow("a", vec![message("a", Some("a"))]));
        assert_eq!(spots(&problems), [(Some("a"), "next")]);
        assert!(problems[0].message.contains("back to itself"));
    }

    #[test]
    fn separate_loops_are_reported_separately_in_id_order() {
        let flow = flow(
            "z",
            vec![
                message("z", Some("y")),
                message("y", Some("z")),
                message("a", Some("a")),
            ],
        );
        assert_eq!(
            spots(&check(&flow)),
            [(Some("a"), "next"), (Some("y"), "next")]
        );
    }

    #[test]
    fn a_loop_through_a_question_is_fine() {
        let flow = flow("a", vec![message("a", Some("q")), question("q", Some("a"))]);
        assert_eq!(check(&flow), []);
    }

    #[test]
    fn a_loop_that_bypasses_the_question_of_a_larger_loop_is_reported() {
        let branch = Block {
            conditions: Some(vec![Condition {
                next: "q".into(),
                ..condition("v", ConditionOperator::IsSet, None)
            }]),
            next: Some("a".into()),
            ..Block::new("b", BlockKind::Condition)
        };
        let flow = flow(
            "a",
            vec![message("a", Some("b")), branch, question("q", Some("a"))],
        );
        let problems = check(&flow);
        assert_eq!(spots(&problems), [(Some("a"), "next")]);
        assert!(problems[0].message.contains("\"a\", \"b\""));
    }

    #[test]
    fn a_very_long_chain_does_not_overflow_the_stack() {
        let count = 50_000;
        let mut blocks: Vec<Block> = (0..count)
            .map(|i| message(&format!("m{i}"), Some(&format!("m{}", i + 1))))
            .collect();
        blocks.push(message(&format!("m{count}"), Some("m0")));
        let flow = flow("m0", blocks);
        let limits = Limits {
            max_blocks: usize::MAX,
            ..Limits::default()
        };
        let problems = validate_flow(&flow, &|_| true, &limits);
        assert_eq!(spots(&problems), [(Some("m0"), "next")]);
        assert_eq!(unreachable_blocks(&flow), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_at_once_in_a_stable_order() {
        let flow = flow(
            "ghost",
            vec![
                Block {
                    text: None,
                    next: Some("nowhere".into()),
                    ..message("a", None)
                },
                Block::new("a", BlockKind::Webhook),
                condition_block(vec![condition("", ConditionOperator::Equals, None)]),
            ],
        );
        let problems = check(&flow);
        assert_eq!(
            spots(&problems),
            [
                (None, "startBlockId"),
                (Some("a"), "text"),
                (Some("a"), "next"),
                (Some("a"), "id"),
                (Some("a"), "webhookId"),
                (Some("c"), "conditions[0].variable"),
                (Some("c"), "conditions[0].value"),
                (Some("c"), "conditions[0].next"),
            ]
        );
        assert_eq!(check(&flow), problems);
    }

    #[test]
    fn problems_serialize_with_camel_case_fields() {
        let problem = Problem {
            block_id: Some("a".into()),
            field: "next".into(),
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_value(&problem).ok(),
            Some(serde_json::json!({"blockId": "a", "field": "next", "message": "m"}))
        );
    }

    #[test]
    fn unreachable_blocks_are_those_no_path_from_the_start_reaches() {
        let q = choice_question("q", vec![choice("A", Some("picked")), choice("B", None)]);
        let branch = Block {
            conditions: Some(vec![Condition {
                next: "q".into(),
                ..condition("v", ConditionOperator::IsSet, None)
            }]),
            next: Some("end".into()),
            ..Block::new("c", BlockKind::Condition)
        };
        let flow = with_end(
            "c",
            vec![
                message("orphan", Some("also_orphan")),
                branch,
                q,
                message("picked", None),
                message("also_orphan", Some("c")),
            ],
        );
        assert_eq!(unreachable_blocks(&flow), ["orphan", "also_orphan"]);
    }

    #[test]
    fn without_a_valid_start_every_block_is_unreachable() {
        let blocks = vec![message("a", Some("b")), message("b", None)];
        assert_eq!(
            unreachable_blocks(&flow("ghost", blocks.clone())),
            ["a", "b"]
        );
        let no_start = Flow {
            start_block_id: None,
            blocks,
        };
        assert_eq!(unreachable_blocks(&no_start), ["a", "b"]);
        assert_eq!(unreachable_blocks(&Flow::default()), Vec::<String>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn validation_is_deterministic_and_names_only_existing_blocks(flow in arb_flow()) {
            let problems = check(&flow);
            prop_assert_eq!(&problems, &check(&flow));
            for problem in &problems {
                if let Some(id) = &problem.block_id {
                    prop_assert!(flow.blocks.iter().any(|block| &block.id == id));
                }
                prop_assert!(!problem.message.is_empty());
            }
            let unreachable = unreachable_blocks(&flow);
            prop_assert_eq!(&unreachable, &unreachable_blocks(&flow));
        }

        #[test]
        fn a_flow_that_passes_validation_never_stops_with_an_error(
            flow in arb_shaped_flow(),
            prefilled in arb_prefilled(),
            inputs in arb_inputs(),
        ) {
            if check(&flow).is_empty() {
                let results = drive(&CompiledFlow::new(flow), prefilled, inputs)?;
                for output in results.iter().flat_map(|result| &result.outputs) {
                    prop_assert!(
                        !matches!(output, Output::Say(ChatMessage::Ended { error: Some(_) })),
                        "{:?}",
                        output
                    );
                }
            }
        }

        #[test]
        fn a_flow_with_a_question_less_loop_is_never_valid(flow in arb_shaped_flow()) {
            // Walk the runtime's own edges: if some walk from any block
            // revisits a block before meeting a question, validation must
            // have said so.
            let compiled = CompiledFlow::new(flow.clone());
            let has_loop = flow.blocks.iter().any(|block| loops_without_question(&compiled, block));
            if has_loop {
                prop_assert!(check(&flow).iter().any(|p| p.message.contains("loop")
                    || p.message.contains("itself")));
            }
        }
    }

    /// Depth-first search over non-question blocks from `start`'s targets;
    /// true if it can come back to `start` without passing a question.
    fn loops_without_question(flow: &CompiledFlow, start: &Block) -> bool {
        if start.kind == BlockKind::Question {
            return false;
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = start.targets().collect();
        while let Some(id) = stack.pop() {
            if id == start.id {
                return true;
            }
            let Some(block) = flow.block(id) else {
                continue;
            };
            if block.kind != BlockKind::Question && seen.insert(id) {
                stack.extend(block.targets());
            }
        }
        false
    }
}
