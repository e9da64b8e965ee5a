//! A flow indexed for running.

use std::collections::HashMap;

use regex::Regex;

use super::{
    BlockKind,
    model::{Block, Condition, ConditionOperator, Flow},
    pattern,
};

/// A flow prepared once per published version: an index from block id to
/// block.
#[derive(Debug, Clone)]
pub struct CompiledFlow {
    flow: Flow,
    index: HashMap<String, usize>,
    /// Every pattern of the flow (validation patterns, MATCHES values), compiled once.
    patterns: HashMap<String, Option<Regex>>,
    /// Some block calls a webhook.
    webhooks: bool,
}

impl CompiledFlow {
    /// Indexes `flow`. Never fails: dangling ids are handled at run time and
    /// for a duplicated id the first block wins, as validation rejects both.
    pub fn new(flow: Flow) -> Self {
        let mut index = HashMap::with_capacity(flow.blocks.len());
        let mut patterns = HashMap::new();
        for (position, block) in flow.blocks.iter().enumerate() {
            index.entry(block.id.clone()).or_insert(position);
            let validation = block.validation.iter().filter_map(|v| v.pattern.as_deref());
            let conditions = block.conditions.iter().flatten();
            let own = conditions
                .clone()
                .filter(|c| c.operator == ConditionOperator::Matches)
                .filter_map(|c| c.value.as_deref());
            let nested: Vec<&str> = conditions
                .flat_map(Condition::nested_rules)
                .filter(|(rule, _)| rule.operator == Some(ConditionOperator::Matches))
                .filter_map(|(rule, _)| rule.value.as_deref())
                .collect();
            let matches = own.chain(nested);
            for text in validation.chain(matches) {
                // Validation refuses broken patterns; one that slipped through matches nothing.
                patterns
                    .entry(text.to_owned())
                    .or_insert_with(|| pattern::compile(text).ok());
            }
        }
        let webhooks = flow.blocks.iter().any(|b| b.kind == BlockKind::Webhook);
        Self {
            flow,
            index,
            patterns,
            webhooks,
        }
    }

    /// Whether some block of the flow calls a webhook (whose payload carries the transcript).
    pub fn has_webhooks(&self) -> bool {
        self.webhooks
    }

    /// The flow as it was given.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The compiled form of a pattern of this flow; `None` if it does not compile.
    pub fn pattern(&self, text: &str) -> Option<&Regex> {
        self.patterns.get(text).and_then(Option::as_ref)
    }

    /// The block with this id, if there is one.
    pub fn block(&self, id: &str) -> Option<&Block> {
        self.index
            .get(id)
            .and_then(|&position| self.flow.blocks.get(position))
    }

    /// Whether the block with this id goes next to a CALLBACK block (a WEBHOOK block whose
    /// call then sends that CALLBACK's one-time URL).
    pub fn goes_to_callback(&self, id: &str) -> bool {
        self.block(id)
            .and_then(|b| b.next.as_deref())
            .and_then(|next| self.block(next))
            .is_some_and(|b| b.kind == BlockKind::Callback)
    }
}

impl From<Flow> for CompiledFlow {
    fn from(flow: Flow) -> Self {
        Self::new(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::BlockKind;

    #[test]
    fn blocks_are_found_by_id_and_the_first_duplicate_wins() {
        let flow = Flow {
            start_block_id: Some("a".into()),
            blocks: vec![
                Block::new("a", BlockKind::Message),
                Block::new("b", BlockKind::End),
                Block::new("a", BlockKind::End),
            ],
        };
        let compiled = CompiledFlow::new(flow.clone());
        assert_eq!(compiled.flow(), &flow);
        assert_eq!(
            compiled.block("a").map(|block| block.kind),
            Some(BlockKind::Message)
        );
        assert_eq!(
            compiled.block("b").map(|block| block.kind),
            Some(BlockKind::End)
        );
        assert!(compiled.block("c").is_none());
    }
}
