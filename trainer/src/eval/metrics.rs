//! IR metrics as trec_eval computes them: graded (linear) gains for nDCG, ties in a
//! ranking broken by document id in decreasing order, queries without a relevant
//! judgement left out.

use std::collections::HashMap;

/// Judgements: query id → document id → relevance grade.
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// Sorts `(doc id, score)` pairs as trec_eval ranks them: score descending, ties by
/// document id descending.
pub fn rank(mut run: Vec<(String, f32)>) -> Vec<(String, f32)> {
    run.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    run
}

/// nDCG@k with linear gains (trec_eval `ndcg_cut`).
pub fn ndcg_at(ranked: &[(String, f32)], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, (d, _))| {
            rels.get(d).copied().unwrap_or(0).max(0) as f64 / (i as f64 + 2.0).log2()
        })
        .sum();
    let mut ideal: Vec<i32> = rels.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / (i as f64 + 2.0).log2())
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// Reciprocal rank of the first relevant document within the top k (0 if none).
pub fn mrr_at(ranked: &[(String, f32)], rels: &HashMap<String, i32>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|(d, _)| rels.get(d).is_some_and(|&g| g > 0))
        .map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// Share of the relevant documents found in the top k.
pub fn recall_at(ranked: &[(String, f32)], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let relevant = rels.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|(d, _)| rels.get(d).is_some_and(|&g| g > 0))
        .count();
    found as f64 / relevant as f64
}

/// Mean metrics over queries.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "mrr@10")]
    pub mrr10: f64,
    #[serde(rename = "recall@100")]
    pub recall100: f64,
    #[serde(rename = "recall@1000")]
    pub recall1000: f64,
    pub queries: usize,
}

/// Averages over the queries that have a relevant judgement (a query the run lacks
/// counts as an empty ranking).
pub fn evaluate(runs: &HashMap<String, Vec<(String, f32)>>, qrels: &Qrels) -> Summary {
    let empty = Vec::new();
    let mut s = Summary {
        ndcg10: 0.0,
        mrr10: 0.0,
        recall100: 0.0,
        recall1000: 0.0,
        queries: 0,
    };
    // In query order, so that the sums (and the printed figures) are the same bits
    // from run to run.
    let mut queries: Vec<_> = qrels.iter().collect();
    queries.sort_by(|a, b| a.0.cmp(b.0));
    for (q, rels) in queries {
        if !rels.values().any(|&g| g > 0) {
            continue;
        }
        let ranked = runs.get(q).unwrap_or(&empty);
        s.ndcg10 += ndcg_at(ranked, rels, 10);
        s.mrr10 += mrr_at(ranked, rels, 10);
        s.recall100 += recall_at(ranked, rels, 100);
        s.recall1000 += recall_at(ranked, rels, 1000);
        s.queries += 1;
    }
    let n = s.queries.max(1) as f64;
    s.ndcg10 /= n;
    s.mrr10 /= n;
    s.recall100 /= n;
    s.recall1000 /= n;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(items: &[(&str, f32)]) -> Vec<(String, f32)> {
        rank(items.iter().map(|(d, s)| (d.to_string(), *s)).collect())
    }

    fn rels(items: &[(&str, i32)]) -> HashMap<String, i32> {
        items.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn hand_computed_rankings() {
        // Ranking: a (rel 2), x (unjudged), b (rel 1); c (rel 1) not retrieved.
        let r = run(&[("a", 0.9), ("x", 0.8), ("b", 0.7)]);
        let q = rels(&[("a", 2), ("b", 1), ("c", 1), ("n", 0)]);
        let dcg = 2.0 + 1.0 / 4f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((ndcg_at(&r, &q, 10) - dcg / idcg).abs() < 1e-12);
        assert_eq!(mrr_at(&r, &q, 10), 1.0);
        assert!((recall_at(&r, &q, 100) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(recall_at(&r, &q, 1), 1.0 / 3.0);
        // First relevant at rank 3.
        let r = run(&[("x", 0.9), ("y", 0.8), ("b", 0.7)]);
        assert!((mrr_at(&r, &q, 10) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(mrr_at(&r, &q, 2), 0.0);
    }

    #[test]
    fn ties_break_by_document_id_descending() {
        let r = run(&[("a", 0.5), ("c", 0.5), ("b", 0.5), ("z", 0.9)]);
        let ids: Vec<&str> = r.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(ids, ["z", "c", "b", "a"]);
        // With a tie, which relevant doc comes first changes nDCG.
        let q = rels(&[("a", 1)]);
        assert!((ndcg_at(&r, &q, 10) - 1.0 / 5f64.log2()).abs() < 1e-12);
    }

    #[test]
    fn queries_without_relevant_documents_are_left_out() {
        let mut qrels = Qrels::new();
        qrels.insert("q1".into(), rels(&[("a", 1)]));
        qrels.insert("q2".into(), rels(&[("b", 0)]));
        let mut runs = HashMap::new();
        runs.insert("q1".to_string(), run(&[("a", 1.0)]));
        let s = evaluate(&runs, &qrels);
        assert_eq!(s.queries, 1);
        assert_eq!(s.ndcg10, 1.0);
    }
}
