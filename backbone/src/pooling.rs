//! Pooling token vectors into one vector per input, and L2 normalisation.
//! Written with plain tensor ops so training can differentiate through them.

use candle_core::{DType, Result, Tensor, D};

use crate::config::Pooling;

/// `h`: `[b, t, d]`, `mask`: `[b, t]` (1 = token). Returns `[b, d]`.
pub fn pool(h: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Cls => h.narrow(1, 0, 1)?.squeeze(1),
        // Token vectors are not pooled; the encoder lays them out itself.
        Pooling::Tokens => Ok(h.clone()),
        Pooling::Mean => {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = h.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)
        }
    }
}

/// Divides each row by its L2 norm (at least 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// Cosine similarity of two vectors, summed in f64 (for comparing embeddings).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// In-place L2 normalisation of a vector.
pub fn l2_normalize_vec(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}
