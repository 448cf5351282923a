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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut s0, mut s1, mut s2, mut s3) = (
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
    );
    let mut i = 0;
    // SAFETY: every load reads 16 floats at `i + 16j < n` from slices of length ≥ n.
    unsafe {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let ld = |p: *const f32, at: usize| _mm512_loadu_ps(p.add(at));
        while i + 64 <= n {
            s0 = _mm512_fmadd_ps(ld(pa, i), ld(pb, i), s0);
            s1 = _mm512_fmadd_ps(ld(pa, i + 16), ld(pb, i + 16), s1);
            s2 = _mm512_fmadd_ps(ld(pa, i + 32), ld(pb, i + 32), s2);
            s3 = _mm512_fmadd_ps(ld(pa, i + 48), ld(pb, i + 48), s3);
            i += 64;
        }
        while i + 16 <= n {
            s0 = _mm512_fmadd_ps(ld(pa, i), ld(pb, i), s0);
            i += 16;
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
    _mm512_reduce_add_ps(s)
        + a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| x * y)
            .sum::<f32>()
}

macro_rules! dispatch {
    ($name:ident, $body:ident $(, $wide:ident)?) => {
        pub fn $name(a: &[f32], b: &[f32]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            {
                $(
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has AVX-512F.
                        return unsafe { $wide(a, b) };
                    }
                )?
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

dispatch!(dot, dot_body, dot_avx512);
dispatch!(l2_squared, l2_body);

impl Metric {
    /// The score of two stored-form vectors (normalised already for cosine).
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine | Metric::Dot => dot(a, b),
            Metric::L2 => -l2_squared(a, b).sqrt(),
        }
    }

    /// The graph's distance (lower is closer): `-dot` for cosine and dot, squared
    /// Euclidean for l2.
    #[inline]
    pub(crate) fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine | Metric::Dot => -dot(a, b),
            Metric::L2 => l2_squared(a, b),
        }
    }

    /// Graph distance to score (the same number [`Metric::score`] gives).
    pub(crate) fn score_of_distance(self, d: f32) -> f32 {
        match self {
            Metric::Cosine | Metric::Dot => -d,
            Metric::L2 => -d.max(0.0).sqrt(),
        }
    }
}
