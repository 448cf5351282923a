//! Similarity metrics and the distance the HNSW graph orders by.
//! Scores are "higher is better": cosine similarity, dot product, or the negated
//! Euclidean distance.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Vectors are L2-normalised on insert and query; score = cosine similarity.
    #[default]
    Cosine,
    /// Score = dot product of the vectors as given.
    Dot,
    /// Score = minus the Euclidean distance.
    L2,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "dot" => Ok(Metric::Dot),
            "l2" => Ok(Metric::L2),
            _ => Err(format!("unknown metric `{s}` (expected cosine, dot or l2)")),
        }
    }
}

/// `Σ term(aᵢ, bᵢ)` with 16 independent accumulators, so the sum vectorises.
#[inline(always)]
fn sum_pairs(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| term(*x, *y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += term(x[i], y[i]);
        }
    }
    tail + acc.iter().sum::<f32>()
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| x * y)
}

#[inline(always)]
fn l2_body(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| (x - y) * (x - y))
}

macro_rules! dispatch {
    ($name:ident, $body:ident) => {
        pub fn $name(a: &[f32], b: &[f32]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast(a: &[f32], b: &[f32]) -> f32 {
                    $body(a, b)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `fast` was compiled for.
                    return unsafe { fast(a, b) };
                }
            }
            $body(a, b)
        }
    };
}

dispatch!(dot, dot_body);
dispatch!(l2_squared, l2_body);

impl Metric {
    /// The score of two stored-form vectors (normalised already for cosine).
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine | Metric::Dot => dot(a, b),
            Metric::L2 => -l2_squared(a, b).sqrt(),
        }
    }

    /// Graph distance (lower is closer) to score.
    pub fn score_of_distance(self, d: f32) -> f32 {
        match self {
            Metric::Cosine => 1.0 - d,
            Metric::Dot => -d.ln(),
            Metric::L2 => -d.max(0.0).sqrt(),
        }
    }
}

/// The distance hnsw_rs orders by, which it requires to be non-negative:
/// `1 - cos` (clamped at 0 against rounding), `e^{-dot}` (monotone and positive; dot
/// products beyond ±87 saturate and tie), or squared L2.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GraphDistance(pub Metric);

impl hnsw_rs::prelude::Distance<f32> for GraphDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.0 {
            Metric::Cosine => (1.0 - dot(a, b)).max(0.0),
            Metric::Dot => (-dot(a, b).clamp(-87.0, 87.0)).exp(),
            Metric::L2 => l2_squared(a, b),
        }
    }
}
