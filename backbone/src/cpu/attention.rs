//! Masked multi-head self-attention over the packed projections `q | k | v` of each
//! token (rows of `3d` values): every (sequence, head) job on the rayon pool, only a
//! sequence's real tokens as keys, each head's scores kept in cache. candle's
//! attention would materialise `[batch, heads, t, t]` scores over padding too.
//! Also the training path's masked softmax and its backward.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::activation::exp;
use super::features::{self, multiversion};
use super::matmul::{pack_panel, tiles, Kind, Tile, NR};
use super::vector::{max, sum};

/// A pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Attention of every (sequence, head) over `rows` rows of `src` (`q | k | v`, row
/// stride `d3` = 3d); sequence `i` is rows `starts[i] .. starts[i] + lengths[i]`.
/// Returns the context `[rows, d]`; rows outside every sequence are zero.
pub fn attend(
    src: &[f32],
    d3: usize,
    rows: usize,
    starts: &[usize],
    lengths: &[usize],
    heads: usize,
) -> Vec<f32> {
    let b = lengths.len();
    let d = d3 / 3;
    let hd = d / heads;
    assert!(
        src.len() >= rows * d3 && starts.iter().zip(lengths).all(|(s, l)| s + l <= rows),
        "attend: sequences reach past the {rows} rows"
    );
    let scale = 1.0 / (hd as f32).sqrt();
    let mut ctx = vec![0f32; rows * d];
    let out = SendPtr(ctx.as_mut_ptr());
    let avx512 = features::avx512();
    (0..b * heads)
        .into_par_iter()
        .for_each_init(Vec::<f32>::new, |scores, job| {
            let (bi, h) = (job / heads, job % heads);
            let len = lengths[bi];
            if len == 0 {
                return;
            }
            // Copy the whole wrapper: the closure must not capture its raw field.
            #[allow(clippy::redundant_locals)]
            let out = out;
            let base = starts[bi] * d3 + h * hd;
            if avx512 {
                // SAFETY: `features::avx512()` said the CPU has AVX-512F; the head's
                // q, k, v rows lie inside `src` at stride 3d; the context block
                // [len, hd] at row stride d is this job's alone.
                unsafe {
                    attend_head(
                        &src[base..],
                        d3,
                        d,
                        hd,
                        len,
                        scale,
                        out.0.add(starts[bi] * d + h * hd),
                        d,
                        scores,
                    );
                }
                return;
            }
            let (q, k, v) = (&src[base..], &src[base + d..], &src[base + 2 * d..]);
            scores.clear();
            scores.resize(len * len, 0.0);
            // SAFETY: q, k, v are [len, hd] views with row stride 3d inside `src`;
            // scores is [len, len]; the context block [len, hd] at row stride d is
            // written by this job alone.
            unsafe {
                gemm(
                    len,
                    len,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    q.as_ptr(),
                    1,
                    d3 as isize,
                    k.as_ptr(),
                    d3 as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for row in scores.chunks_mut(len) {
                softmax(row);
            }
            // SAFETY: as above.
            unsafe {
                gemm(
                    len,
                    hd,
                    len,
                    out.0.add(starts[bi] * d + h * hd),
                    1,
                    d as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    len as isize,
                    v.as_ptr(),
                    1,
                    d3 as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
    ctx
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let m = max(row);
    for x in row.iter_mut() {
        *x = exp(*x - m);
    }
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}
multiversion!(softmax, softmax_body, (row: &mut [f32]));

/// `softmax(scale · x)` over each row of `t` values of `[b, …, t]` scores `x`, where
/// the rows of batch entry `i` attend to their first `lengths[i]` keys only (the
/// others get 0): the training path's attention probabilities.
pub fn masked_softmax(x: &[f32], b: usize, t: usize, lengths: &[usize], scale: f32) -> Vec<f32> {
    let per_batch = x.len() / b.max(1);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(t)
        .zip(x.par_chunks(t))
        .enumerate()
        .for_each(|(row, (o, x))| {
            let len = lengths[(row * t) / per_batch].min(t).max(1);
            let m = x[..len].iter().fold(f32::MIN, |m, &v| m.max(v)) * scale;
            let mut sum = 0.0;
            for (o, &v) in o[..len].iter_mut().zip(&x[..len]) {
                *o = exp(v * scale - m);
                sum += *o;
            }
            let inv = 1.0 / sum;
            o[..len].iter_mut().for_each(|v| *v *= inv);
        });
    out
}

/// `g ← scale · p (g − Σ g p)` row by row (rows of `t`): the gradient of
/// [`masked_softmax`]'s input from its output `p` and the output's gradient `g`.
pub fn masked_softmax_backward(g: &mut [f32], p: &[f32], t: usize, scale: f32) {
    g.par_chunks_mut(t).zip(p.par_chunks(t)).for_each(|(g, p)| {
        let dot: f32 = g.iter().zip(p).map(|(a, b)| a * b).sum();
        for (g, &p) in g.iter_mut().zip(p) {
            *g = scale * p * (*g - dot);
        }
    });
}

#[cfg(target_arch = "x86_64")]
use super::activation::exp512;
#[cfg(target_arch = "x86_64")]
use super::vector::lane_mask;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One attention head on the f32 micro-kernel: `softmax(scale · Q Kᵀ) V` for `len`
/// tokens, where row `i` of Q, K and V starts at `src[i·ld]`, `src[i·ld + kv]` and
/// `src[i·ld + 2·kv]` (`hd` values each); the context rows go to `out` at stride `ldo`.
/// K and Vᵀ are packed into panels in `buf`, the scores stay in it.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds every row read; `out` has `len` rows of `hd`
/// writable values at stride `ldo`, written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_head(
    src: &[f32],
    ld: usize,
    kv: usize,
    hd: usize,
    len: usize,
    scale: f32,
    out: *mut f32,
    ldo: usize,
    buf: &mut Vec<f32>,
) {
    let (pk, pv) = (len.div_ceil(NR), hd.div_ceil(NR));
    let (kp_len, vp_len) = (pk * hd * NR, pv * len * NR);
    buf.clear();
    buf.resize(kp_len + vp_len + len * len, 0.0);
    let (kp, rest) = buf.split_at_mut(kp_len);
    let (vp, scores) = rest.split_at_mut(vp_len);
    for (p, panel) in kp.chunks_mut(hd * NR).enumerate() {
        pack_panel(panel, &src[kv..], ld, p, len, hd);
    }
    for key in 0..len {
        let row = &src[key * ld + 2 * kv..][..hd];
        for (p, part) in row.chunks(NR).enumerate() {
            vp[(p * len + key) * NR..][..part.len()].copy_from_slice(part);
        }
    }
    // scores = scale · Q Kᵀ, then ctx = softmax(scores) V.
    let product = |a: *const f32, lda, b: *const f32, steps, c: *mut f32, ldc, cols, scale| Tile {
        a: a as *const u8,
        lda,
        b: b as *const u8,
        steps,
        c,
        ldc,
        cols,
        bias: std::ptr::null(),
        accumulate: false,
        scale,
        rows: std::ptr::null(),
        col_scale: std::ptr::null(),
        col_sum: std::ptr::null(),
    };
    let qk = product(
        src.as_ptr(),
        ld,
        kp.as_ptr(),
        hd,
        scores.as_mut_ptr(),
        len,
        len,
        scale,
    );
    // SAFETY: the tiles read rows inside `src`, `kp`, `vp` and `scores` and write the
    // valid columns of `scores` and `out` (the caller's contract).
    unsafe { tiles(&qk, Kind::F32, 0..len, 0..pk) };
    for row in scores.chunks_mut(len) {
        // SAFETY: the caller's contract (AVX-512F).
        unsafe { softmax_avx512(row) };
    }
    let av = product(scores.as_ptr(), len, vp.as_ptr(), len, out, ldo, hd, 1.0);
    // SAFETY: as above.
    unsafe { tiles(&av, Kind::F32, 0..len, 0..pv) };
}

/// Softmax of one row in place, 16 lanes at a time (masked tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_avx512(row: &mut [f32]) {
    let n = row.len();
    let mask = |i: usize| lane_mask(n - i);
    let p = row.as_mut_ptr();
    // SAFETY: every load and store is masked to the row's n values.
    unsafe {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < n {
            let v = _mm512_mask_loadu_ps(m, mask(i), p.add(i));
            m = _mm512_max_ps(m, v);
            i += 16;
        }
        let mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let k = mask(i);
            let v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), mx));
            sum = _mm512_mask_add_ps(sum, k, sum, v);
            _mm512_mask_storeu_ps(p.add(i), k, v);
            i += 16;
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        let mut i = 0;
        while i < n {
            let k = mask(i);
            _mm512_mask_storeu_ps(
                p.add(i),
                k,
                _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv),
            );
            i += 16;
        }
    }
}
