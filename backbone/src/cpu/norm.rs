//! LayerNorm over rows: the serving path's residual add + LayerNorm in one pass, and
//! the training path's LayerNorm with its backward (input, weight and bias).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::features::multiversion;
use super::vector::{sum, sum_sq};

#[inline(always)]
fn add_layer_norm_body(
    o: &mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    g: &[f32],
    bt: &[f32],
    eps: f32,
) {
    let d = o.len() as f32;
    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
        o.write(a + b);
    }
    // SAFETY: every element was written just above; MaybeUninit<f32> has f32's
    // layout.
    let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
    let mean = sum(o) / d;
    o.iter_mut().for_each(|v| *v -= mean);
    let var = sum_sq(o) / d;
    let inv = 1.0 / (var + eps).sqrt();
    for ((o, g), bt) in o.iter_mut().zip(g).zip(bt) {
        *o = *o * inv * g + bt;
    }
}
multiversion!(add_layer_norm_row, add_layer_norm_body, (o: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], g: &[f32], bt: &[f32], eps: f32));

/// `out = LayerNorm(x + y)` row by row (rows of `gamma.len()` values), on the rayon
/// pool; every element of `out` is written.
pub fn add_layer_norm(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    y: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let d = gamma.len();
    assert!(
        out.len() == x.len()
            && x.len() == y.len()
            && beta.len() == d
            && x.len().is_multiple_of(d.max(1)),
        "add_layer_norm: out {}, x {}, y {}, gamma {d}, beta {}",
        out.len(),
        x.len(),
        y.len(),
        beta.len()
    );
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d).zip(y.par_chunks(d)))
        .for_each(|(o, (a, b))| add_layer_norm_row(o, a, b, gamma, beta, eps));
}

/// Mean and 1/σ of a row.
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of each row of `x` (rows of `w.len()` values) for training.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, x)| {
            let (mean, rstd) = moments(x, eps);
            for i in 0..d {
                o[i] = (x[i] - mean) * rstd * w[i] + b[i];
            }
        });
    out
}

/// The gradients of [`layer_norm`] for its input, weight and bias, given the
/// output's gradient `g`. The weight and bias gradients are summed over fixed blocks
/// of rows, in order: they do not depend on how rayon splits the work, so runs are
/// reproducible.
pub fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    const BLOCK: usize = 64;
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(d * BLOCK)
        .zip(x.par_chunks(d * BLOCK).zip(g.par_chunks(d * BLOCK)))
        .map(|(dxb, (xb, gb))| {
            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
            for (dx, (x, g)) in dxb.chunks_mut(d).zip(xb.chunks(d).zip(gb.chunks(d))) {
                let (mean, rstd) = moments(x, eps);
                let (mut m1, mut m2) = (0f32, 0f32);
                for i in 0..d {
                    let xh = (x[i] - mean) * rstd;
                    let dxh = g[i] * w[i];
                    m1 += dxh;
                    m2 += dxh * xh;
                    dw[i] += g[i] * xh;
                    db[i] += g[i];
                }
                let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                for i in 0..d {
                    let xh = (x[i] - mean) * rstd;
                    dx[i] = rstd * (g[i] * w[i] - m1 - xh * m2);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    for (pw, pb) in &partial {
        dw.iter_mut().zip(pw).for_each(|(a, c)| *a += c);
        db.iter_mut().zip(pb).for_each(|(a, c)| *a += c);
    }
    (dx, dw, db)
}
