//! Fusing the retrieval signals into one score: dense (vector) and lexical (BM25) by a
//! weighted mean of scores on one absolute scale (or by reciprocal-rank fusion), then
//! recency and importance as further terms.

use serde::Deserialize;

use super::lexical::reciprocal_rank_fusion;

/// How retrieval signals are weighted (`[retrieval]` in the config).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RankingWeights {
    pub dense: f32,
    pub lexical: f32,
    /// The RRF constant: larger flattens the difference between ranks.
    pub rrf_k: f32,
    pub recency: f32,
    pub recency_half_life_days: f32,
    pub importance: f32,
    /// How the two rankings are combined.
    pub fusion: Fusion,
    /// Added to the score of a memory recorded within the period a query names ("in
    /// March 2024"; see [`super::time_hint`]).
    pub period_boost: f32,
    /// How much of the previous turn's embedding an imported conversation turn's
    /// embedding takes in (see `MemoryService::embed_turns`); 0 embeds each turn alone.
    pub turn_context_weight: f32,
}

/// Reciprocal-rank fusion looks only at ranks; score fusion takes the weighted mean of
/// the cosine similarity and the lexical coverage (BM25 divided by the query's weight,
/// see `LexicalIndex::query_weight`), both absolute, so a clear winner in one list is
/// not flattened to "first" and a weak best match stays weak (which `min_score` relies on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    Rrf,
    Scores,
}

impl Default for RankingWeights {
    fn default() -> Self {
        Self {
            dense: 2.0,
            lexical: 1.0,
            rrf_k: 60.0,
            recency: 0.1,
            recency_half_life_days: 30.0,
            importance: 0.1,
            fusion: Fusion::Scores,
            period_boost: 0.1,
            turn_context_weight: 0.2,
        }
    }
}

/// Which signals a search uses (the API's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Hybrid,
    Dense,
    Lexical,
}

/// A candidate's facts, as the fusion needs them.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub point: u64,
    pub created_at_ms: i64,
    pub importance: f32,
}

/// 1 for now, halving every `half_life_days` of age; future times count as now.
pub fn recency(created_at_ms: i64, now_ms: i64, half_life_days: f32) -> f32 {
    let age_days = (now_ms - created_at_ms).max(0) as f32 / 86_400_000.0;
    if half_life_days <= 0.0 {
        return 0.0;
    }
    0.5f32.powf(age_days / half_life_days)
}

/// Fused scores in 0..1, best first. `dense` (cosine similarities) and `lexical` (BM25
/// coverage, 0..~1) are (point, score) lists best first, normally over the same
/// candidates; `facts` gives each candidate's age and importance. The relevance part is
/// in 0..1 (1: first in every list, or a perfect score in both); the terms are then
/// mixed as
/// `(1 − r − i)·relevance + r·recency + i·importance`.
pub fn fuse(
    dense: &[(u64, f32)],
    lexical: &[(u64, f32)],
    facts: &dyn Fn(u64) -> Option<Candidate>,
    w: &RankingWeights,
    now_ms: i64,
) -> Vec<(u64, f32)> {
    let relevance: Vec<(u64, f32)> = match w.fusion {
        Fusion::Rrf => {
            let (d, l): (Vec<u64>, Vec<u64>) =
                (dense.iter().map(|h| h.0).collect(), lexical.iter().map(|h| h.0).collect());
            let lists = [(&d[..], w.dense), (&l[..], w.lexical)];
            let best: f32 = lists.iter().filter(|(l, _)| !l.is_empty()).map(|(_, wt)| wt / (w.rrf_k + 1.0)).sum();
            reciprocal_rank_fusion(&lists, w.rrf_k)
                .into_iter()
                .map(|(p, rrf)| (p, if best > 0.0 { rrf / best } else { 0.0 }))
                .collect()
        }
        Fusion::Scores => {
            let used =
                (if dense.is_empty() { 0.0 } else { w.dense }) + (if lexical.is_empty() { 0.0 } else { w.lexical });
            let mut sum: std::collections::HashMap<u64, f32> = std::collections::HashMap::new();
            for (p, cos) in dense {
                *sum.entry(*p).or_default() += w.dense * cos.clamp(0.0, 1.0);
            }
            for (p, coverage) in lexical {
                *sum.entry(*p).or_default() += w.lexical * coverage.clamp(0.0, 1.0);
            }
            sum.into_iter().map(|(p, s)| (p, if used > 0.0 { s / used } else { 0.0 })).collect()
        }
    };
    let relevance_share = (1.0 - w.recency - w.importance).max(0.0);
    let mut out: Vec<(u64, f32)> = relevance
        .into_iter()
        .filter_map(|(point, rel)| {
            let c = facts(point)?;
            let score = relevance_share * rel
                + w.recency * recency(c.created_at_ms, now_ms, w.recency_half_life_days)
                + w.importance * c.importance.clamp(0.0, 1.0);
            Some((point, score))
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn recency_halves_every_half_life() {
        assert!((recency(0, 0, 30.0) - 1.0).abs() < 1e-6);
        assert!((recency(0, 30 * DAY, 30.0) - 0.5).abs() < 1e-6);
        assert!((recency(0, 60 * DAY, 30.0) - 0.25).abs() < 1e-6);
        assert_eq!(recency(10 * DAY, 0, 30.0), 1.0, "the future counts as now");
    }

    #[test]
    fn agreement_between_lists_wins_and_scores_stay_in_range() {
        let facts = |p: u64| Some(Candidate { point: p, created_at_ms: 0, importance: 0.5 });
        let w = RankingWeights { recency: 0.0, importance: 0.0, fusion: Fusion::Rrf, ..Default::default() };
        // 2 is second in both lists; 1 and 3 are first in one and absent from the other.
        let fused = fuse(&[(1, 0.9), (2, 0.8)], &[(3, 5.0), (2, 4.0)], &facts, &w, 0);
        assert_eq!(fused[0].0, 2);
        // 2: (1/62 + 1/62) / (2/61) = 61/62.
        assert!((fused[0].1 - 61.0 / 62.0).abs() < 1e-6, "{fused:?}");
        // First in both: exactly 1.
        let fused = fuse(&[(7, 0.9)], &[(7, 3.0)], &facts, &w, 0);
        assert!((fused[0].1 - 1.0).abs() < 1e-6);
        // One list only (dense mode): its first scores 1.
        let fused = fuse(&[(7, 0.9), (8, 0.5)], &[], &facts, &w, 0);
        assert!((fused[0].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn score_fusion_is_the_weighted_mean_of_cosine_and_coverage() {
        let facts = |p: u64| Some(Candidate { point: p, created_at_ms: 0, importance: 0.5 });
        let w = RankingWeights {
            dense: 2.0,
            lexical: 1.0,
            recency: 0.0,
            importance: 0.0,
            fusion: Fusion::Scores,
            ..Default::default()
        };
        // 1: (2·0.9 + 0)/3 = 0.6; 2: (2·0.8 + 0.5)/3 = 0.7; 3: (2·0.1 + 0.9)/3 ≈ 0.367.
        let fused = fuse(&[(1, 0.9), (2, 0.8), (3, 0.1)], &[(3, 0.9), (2, 0.5), (1, 0.0)], &facts, &w, 0);
        let got: Vec<(u64, f32)> = fused.iter().map(|(p, s)| (*p, (s * 1000.0).round() / 1000.0)).collect();
        assert_eq!(got, vec![(2, 0.7), (1, 0.6), (3, 0.367)]);
        // Out-of-range inputs are clamped: a negative cosine adds nothing, coverage over 1
        // (a document repeating the query's terms) counts as 1.
        let fused = fuse(&[(1, -0.3)], &[(1, 1.4)], &facts, &w, 0);
        assert!((fused[0].1 - 1.0 / 3.0).abs() < 1e-6, "{fused:?}");
        // Dense only: the cosine itself.
        let fused = fuse(&[(1, 0.9)], &[], &facts, &w, 0);
        assert!((fused[0].1 - 0.9).abs() < 1e-6);
    }

    #[test]
    fn recency_and_importance_break_rank_ties() {
        let w = RankingWeights { dense: 1.0, lexical: 1.0, fusion: Fusion::Rrf, ..Default::default() };
        let facts =
            |p: u64| Some(Candidate { point: p, created_at_ms: if p == 1 { 0 } else { 300 * DAY }, importance: 0.5 });
        // Equal ranks (1 first in dense, 2 first in lexical); 2 is recent, 1 is old.
        let fused = fuse(&[(1, 0.9)], &[(2, 3.0)], &facts, &w, 300 * DAY);
        assert_eq!(fused[0].0, 2);
        let facts = |p: u64| Some(Candidate { point: p, created_at_ms: 0, importance: if p == 1 { 1.0 } else { 0.0 } });
        let fused = fuse(&[(1, 0.9)], &[(2, 3.0)], &facts, &w, 0);
        assert_eq!(fused[0].0, 1);
        // Points whose facts are gone (deleted meanwhile) are dropped.
        assert!(fuse(&[(1, 0.9)], &[], &|_| None, &w, 0).is_empty());
    }
}
