//! The flow as a graph: reachability and strongly connected components, for the checks of
//! unreachable blocks and of loops a visitor could never leave.
use std::collections::{HashMap, HashSet};

use crate::engine::model::{Block, Flow};

/// The blocks as a graph: one node per id (the first block wins, as at run
/// time), edges to every existing target.
pub(super) struct Graph<'a> {
    pub(super) nodes: Vec<&'a Block>,
    pub(super) index: HashMap<&'a str, usize>,
    pub(super) edges: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    pub(super) fn new(flow: &'a Flow, include: impl Fn(&Block) -> bool) -> Self {
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
pub(super) fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
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
