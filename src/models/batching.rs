//! Length-aware batching: how a set of inputs of different lengths is cut
//! into padded executions of a fixed-shape program.
//!
//! A compiled encoder has one shape, `batch × seq`; every input is padded to
//! its execution's `seq`, every execution to its `batch`. One execution for
//! everything wastes the padding (a 139-token paragraph among 23 sentences
//! of at most 25 tokens pads all 24 rows to the paragraph); one execution
//! per input pays the per-call cost every time and runs tiny matmuls. The
//! [`plan`] between the two is chosen by a measured [`CostModel`]: inputs
//! are sorted by length, and a dynamic program over the split points of the
//! sorted list picks the groups whose summed modelled cost is least. For a
//! cost that grows with the group's row count and longest length, some
//! optimal partition consists of runs of the sorted list, so the search is
//! exact for the model, in `O(n × max_batch)`.
//!
//! Shapes come from a finite grid ([`batch_bucket`], [`seq_bucket`]: 11
//! batch sizes × 39 lengths up to 512), so a workload compiles a bounded
//! set of programs (each compiled once, then loaded from the persistent
//! compilation cache by later processes).

use std::ops::Range;

/// Batch sizes an execution may have (a group of `n` rows runs in the
/// smallest one `>= n`).
pub const BATCH_BUCKETS: [usize; 11] = [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32];

/// The padded batch size for `n` rows: the smallest of [`BATCH_BUCKETS`]
/// not below `n` (`n` itself above the largest).
pub fn batch_bucket(n: usize) -> usize {
    BATCH_BUCKETS.iter().copied().find(|&b| b >= n).unwrap_or(n)
}

/// The padded length for an input of `n` tokens, at most `limit` (the
/// model's position count): the length itself from 8 to 32 tokens (most
/// sentences; padding 17 tokens to 20 made a batch of 8 short sentences
/// 12% slower, docs/benchmarks.md, MiniLM), multiples of 4 up to 64, of 8
/// up to 128, of 16 up to 256, of 32 above. Up to 512 tokens that is 57
/// lengths, each compiled once (and kept in the persistent cache); the
/// waste is at most 3, 7, 15 or 31 tokens above 32, under 25% of the input
/// (139 tokens pad to 144).
pub fn seq_bucket(n: usize, limit: usize) -> usize {
    let n = n.max(8);
    let step = match n {
        0..=32 => 1,
        33..=64 => 4,
        65..=128 => 8,
        129..=256 => 16,
        _ => 32,
    };
    n.div_ceil(step).saturating_mul(step).min(limit.max(1))
}

/// The modelled run time of one execution of a `batch × seq` program, in
/// microseconds: `per_call + per_token × t + per_token_pos × t × seq` with
/// `t = batch × seq` padded tokens (the dense layers cost per token; the
/// attention scores cost per token and position).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Fixed cost of one execution: argument upload, dispatch, result
    /// download, and the fixed part of running a program.
    pub per_call_us: f64,
    /// Cost of each padded token.
    pub per_token_us: f64,
    /// Cost of each padded token per position of its row (attention).
    pub per_token_pos_us: f64,
}

impl CostModel {
    /// all-MiniLM-L6-v2 on the default CPU plugin (ZML's build), fitted by
    /// least squares to the times `cargo bench --bench minilm_cost`
    /// measured for 20 `batch × seq` shapes on a quiet 2-core AMD EPYC
    /// (2026-12-03, load 1.0–1.5; see docs/benchmarks.md, MiniLM). Only the
    /// ratios matter to [`plan`]: one call costs as much as ~27 tokens.
    pub const MINILM_CPU: CostModel = CostModel {
        per_call_us: 1825.0,
        per_token_us: 66.8,
        per_token_pos_us: 0.088,
    };

    /// The modelled time of one `batch × seq` execution (µs).
    pub fn cost(&self, batch: usize, seq: usize) -> f64 {
        let tokens = (batch * seq) as f64;
        self.per_call_us + self.per_token_us * tokens + self.per_token_pos_us * tokens * seq as f64
    }
}

/// One execution of a [`plan`]: the inputs `rows` (positions in the sorted
/// order), run as a `batch × seq` program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Positions in the length-sorted order.
    pub rows: Range<usize>,
    /// Padded batch size (`>= rows.len()`).
    pub batch: usize,
    /// Padded length (`>=` the longest input of the group).
    pub seq: usize,
}

/// Splits inputs whose lengths are `sorted_lens` (ascending, each at least 1
/// and at most `limit`) into executions of at most `max_batch` rows that
/// minimise the summed `model` cost; groups come in ascending length order
/// and cover every input once. An empty list gives no groups.
pub fn plan(
    sorted_lens: &[usize],
    model: &CostModel,
    max_batch: usize,
    limit: usize,
) -> Vec<Group> {
    let n = sorted_lens.len();
    let max_batch = max_batch.max(1);
    // best[j]: least cost of the first j inputs; from[j]: where its last
    // group starts.
    let mut best = vec![0f64; n + 1];
    let mut from = vec![0usize; n + 1];
    for j in 1..=n {
        let seq = seq_bucket(sorted_lens[j - 1], limit);
        best[j] = f64::INFINITY;
        // Ascending start: on a tie the larger group (fewer calls) wins.
        for i in j.saturating_sub(max_batch)..j {
            let c = best[i] + model.cost(batch_bucket(j - i).min(max_batch), seq);
            if c < best[j] {
                best[j] = c;
                from[j] = i;
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = from[j];
        groups.push(Group {
            rows: i..j,
            batch: batch_bucket(j - i).min(max_batch).max(j - i),
            seq: seq_bucket(sorted_lens[j - 1], limit),
        });
        j = i;
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: CostModel = CostModel::MINILM_CPU;

    #[test]
    fn buckets() {
        assert_eq!(seq_bucket(1, 512), 8);
        assert_eq!(seq_bucket(9, 512), 9);
        assert_eq!(seq_bucket(25, 512), 25);
        assert_eq!(seq_bucket(32, 512), 32);
        assert_eq!(seq_bucket(33, 512), 36);
        assert_eq!(seq_bucket(64, 512), 64);
        assert_eq!(seq_bucket(65, 512), 72);
        assert_eq!(seq_bucket(129, 512), 144);
        assert_eq!(seq_bucket(139, 512), 144);
        assert_eq!(seq_bucket(257, 512), 288);
        assert_eq!(seq_bucket(512, 512), 512);
        assert_eq!(seq_bucket(20, 16), 16, "capped at the limit");
        let distinct: std::collections::BTreeSet<usize> =
            (1..=512).map(|n| seq_bucket(n, 512)).collect();
        assert_eq!(distinct.len(), 57);
        assert_eq!(batch_bucket(1), 1);
        assert_eq!(batch_bucket(5), 6);
        assert_eq!(batch_bucket(23), 24);
        assert_eq!(batch_bucket(33), 33);
    }

    fn total(groups: &[Group]) -> f64 {
        groups.iter().map(|g| M.cost(g.batch, g.seq)).sum()
    }

    fn covers(groups: &[Group], n: usize) {
        let mut next = 0;
        for g in groups {
            assert_eq!(g.rows.start, next, "{groups:?}");
            assert!(!g.rows.is_empty() && g.rows.len() <= g.batch);
            next = g.rows.end;
        }
        assert_eq!(next, n);
    }

    #[test]
    fn a_long_input_among_short_ones_runs_alone() {
        let mut lens = vec![12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24, 25];
        lens.extend([9, 10, 11, 11, 12, 13, 13, 14, 17, 20, 25]);
        lens.push(139);
        lens.sort();
        let groups = plan(&lens, &M, 32, 512);
        covers(&groups, lens.len());
        let last = groups.last().unwrap();
        assert_eq!((last.rows.len(), last.batch, last.seq), (1, 1, 144));
        let one = Group {
            rows: 0..24,
            batch: 24,
            seq: 144,
        };
        assert!(total(&groups) < 0.5 * total(&[one]), "{groups:?}");
    }

    #[test]
    fn equal_lengths_share_one_call_and_the_plan_is_optimal() {
        let groups = plan(&[10; 8], &M, 32, 512);
        assert_eq!(
            groups,
            [Group {
                rows: 0..8,
                batch: 8,
                seq: 10
            }]
        );
        // Exhaustive check on small inputs: no partition into runs is cheaper.
        let lens = [3, 9, 17, 30, 31, 70, 71, 200];
        let best = total(&plan(&lens, &M, 4, 512));
        for mask in 0u32..(1 << (lens.len() - 1)) {
            let mut groups = Vec::new();
            let mut start = 0;
            for j in 1..=lens.len() {
                if j == lens.len() || mask & (1 << (j - 1)) != 0 {
                    let n = j - start;
                    if n <= 4 {
                        groups.push(Group {
                            rows: start..j,
                            batch: batch_bucket(n),
                            seq: seq_bucket(lens[j - 1], 512),
                        });
                    } else {
                        groups.clear();
                        break;
                    }
                    start = j;
                }
            }
            if !groups.is_empty() {
                assert!(best <= total(&groups) + 1e-9, "{groups:?} beats the plan");
            }
        }
    }

    #[test]
    fn max_batch_bounds_groups_and_empty_input_plans_nothing() {
        assert!(plan(&[], &M, 32, 512).is_empty());
        let lens = vec![10; 70];
        let groups = plan(&lens, &M, 32, 512);
        covers(&groups, 70);
        assert!(groups.iter().all(|g| g.batch <= 32));
        let groups = plan(&lens, &M, 5, 512);
        covers(&groups, 70);
        assert!(groups.iter().all(|g| g.rows.len() <= 5 && g.batch <= 5));
    }
}
