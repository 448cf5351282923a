//! Fusion of a dense and a lexical result list into one (hybrid search).
//!
//! - `rrf` (reciprocal rank fusion): score = Σ over the lists that hold the document
//!   of 1 / (k + rank), rank from 1. Scores of different kinds never meet.
//! - `weighted`: each list's scores are min-max normalised over that list
//!   ((s − min) / (max − min); 1 when all are equal), then
//!   score = w · dense + (1 − w) · lexical, a list that misses the document adding 0.
//!
//! Ties are broken by id, so the order is deterministic.

use std::collections::HashMap;

use crate::Hit;

/// How two lists become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    Rrf { k: f32 },
    Weighted { dense_weight: f32 },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60.0 }
    }
}

/// Where one side placed a document: rank from 1 and that side's own score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Side {
    pub rank: usize,
    pub score: f32,
}

/// A fused hit: the fused score, and each side's rank and score where it found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub hit: Hit,
    pub dense: Option<Side>,
    pub lexical: Option<Side>,
}

fn normalised(hits: &[Hit]) -> impl Fn(f32) -> f32 {
    let min = hits.iter().map(|h| h.score).fold(f32::INFINITY, f32::min);
    let max = hits
        .iter()
        .map(|h| h.score)
        .fold(f32::NEG_INFINITY, f32::max);
    move |s| {
        if max > min {
            (s - min) / (max - min)
        } else {
            1.0
        }
    }
}

/// Fuses two lists (each best first); the result is best first, every document once.
pub fn fuse(dense: Vec<Hit>, lexical: Vec<Hit>, how: Fusion) -> Vec<Fused> {
    let nd = normalised(&dense);
    let nl = normalised(&lexical);
    let side_score = |side: &Side, is_dense: bool| match how {
        Fusion::Rrf { k } => 1.0 / (k + side.rank as f32),
        Fusion::Weighted { dense_weight: w } => {
            if is_dense {
                w * nd(side.score)
            } else {
                (1.0 - w) * nl(side.score)
            }
        }
    };
    let mut by_id: HashMap<String, Fused> = HashMap::new();
    for (i, h) in dense.into_iter().enumerate() {
        let side = Side {
            rank: i + 1,
            score: h.score,
        };
        by_id.insert(
            h.id.clone(),
            Fused {
                hit: h,
                dense: Some(side),
                lexical: None,
            },
        );
    }
    for (i, h) in lexical.into_iter().enumerate() {
        let side = Side {
            rank: i + 1,
            score: h.score,
        };
        by_id
            .entry(h.id.clone())
            .or_insert(Fused {
                hit: h,
                dense: None,
                lexical: None,
            })
            .lexical = Some(side);
    }
    let mut out: Vec<Fused> = by_id
        .into_values()
        .map(|mut f| {
            f.hit.score = f.dense.map_or(0.0, |s| side_score(&s, true))
                + f.lexical.map_or(0.0, |s| side_score(&s, false));
            f
        })
        .collect();
    out.sort_by(|a, b| {
        b.hit
            .score
            .total_cmp(&a.hit.score)
            .then_with(|| a.hit.id.cmp(&b.hit.id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(xs: &[(&str, f32)]) -> Vec<Hit> {
        xs.iter()
            .map(|(id, s)| Hit {
                id: (*id).into(),
                score: *s,
                text: String::new(),
                metadata: serde_json::Value::Null,
            })
            .collect()
    }

    #[test]
    fn rrf_adds_reciprocal_ranks() {
        let d = hits(&[("a", 0.9), ("b", 0.8), ("c", 0.7)]);
        let l = hits(&[("c", 12.0), ("d", 9.0), ("a", 3.0)]);
        let f = fuse(d, l, Fusion::Rrf { k: 60.0 });
        let got: Vec<(&str, f32)> = f.iter().map(|x| (x.hit.id.as_str(), x.hit.score)).collect();
        let a = 1.0 / 61.0 + 1.0 / 63.0;
        let c = 1.0 / 63.0 + 1.0 / 61.0;
        let b = 1.0 / 62.0;
        let dd = 1.0 / 62.0;
        // a and c tie exactly: id order.
        assert_eq!(got[0].0, "a");
        assert!((got[0].1 - a).abs() < 1e-7);
        assert_eq!(got[1].0, "c");
        assert!((got[1].1 - c).abs() < 1e-7);
        assert_eq!((got[2].0, got[3].0), ("b", "d"));
        assert!((got[2].1 - b).abs() < 1e-7 && (got[3].1 - dd).abs() < 1e-7);
        let a = &f[0];
        assert_eq!(
            a.dense,
            Some(Side {
                rank: 1,
                score: 0.9
            })
        );
        assert_eq!(
            a.lexical,
            Some(Side {
                rank: 3,
                score: 3.0
            })
        );
        assert_eq!(f[2].lexical, None);
        assert_eq!(f[3].dense, None);
    }

    #[test]
    fn weighted_normalises_each_list() {
        let d = hits(&[("a", 0.9), ("b", 0.5), ("c", 0.4)]);
        let l = hits(&[("c", 20.0), ("a", 10.0), ("e", 0.0)]);
        let f = fuse(d, l, Fusion::Weighted { dense_weight: 0.7 });
        let score = |id: &str| f.iter().find(|x| x.hit.id == id).unwrap().hit.score;
        // dense: (s - 0.4) / 0.5; lexical: s / 20.
        assert!((score("a") - (0.7 * 1.0 + 0.3 * 0.5)).abs() < 1e-6);
        assert!((score("b") - 0.7 * 0.2).abs() < 1e-6);
        assert!((score("c") - (0.7 * 0.0 + 0.3 * 1.0)).abs() < 1e-6);
        assert!((score("e") - 0.0).abs() < 1e-6);
        assert_eq!(f[0].hit.id, "a");
        assert_eq!(f[1].hit.id, "c");
        // One document only, or all scores equal: normalised to 1.
        let f = fuse(
            hits(&[("x", 0.3)]),
            Vec::new(),
            Fusion::Weighted { dense_weight: 0.5 },
        );
        assert!((f[0].hit.score - 0.5).abs() < 1e-6);
    }

    #[test]
    fn empty_sides() {
        assert!(fuse(Vec::new(), Vec::new(), Fusion::default()).is_empty());
        let f = fuse(Vec::new(), hits(&[("a", 1.0)]), Fusion::default());
        assert_eq!(f.len(), 1);
        assert!((f[0].hit.score - 1.0 / 61.0).abs() < 1e-7);
    }
}
