//! The adapter bottleneck added to a target, row by row: `o = t + b_U + U act(D x +
//! b_D)`. Each row's hidden values stay in registers and the output is written once,
//! in a single pass over both inputs: the adapter's small products cost no
//! zero-filled buffers, no copy of the target and no separate bias and activation
//! passes. The weights are laid out for it once, when an adapter is built
//! ([`BottleneckWeights`]).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::activation::{activate, Epilogue};
use super::features::{self, multiversion};
use super::vector::axpy_body;

/// The weights of one bottleneck laid out for [`bottleneck_rows_avx512`]: the down
/// projection transposed to `[d, rp]` and its bias to `[rp]` (`rp` = r rounded up
/// to 16 lanes, zeros beyond r), the up projection transposed to `[r, d]`.
#[derive(Clone)]
pub struct BottleneckWeights {
    pub(crate) d: usize,
    pub(crate) r: usize,
    pub(crate) rp: usize,
    pub(crate) down_t: Vec<f32>,
    pub(crate) down_b: Vec<f32>,
    pub(crate) up_t: Vec<f32>,
    pub(crate) up_b: Vec<f32>,
}

impl std::fmt::Debug for BottleneckWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BottleneckWeights(r {}, d {})", self.r, self.d)
    }
}

impl BottleneckWeights {
    /// `(r, d)`: hidden width and model width.
    pub fn dims(&self) -> (usize, usize) {
        (self.r, self.d)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.down_t.len() + self.down_b.len() + self.up_t.len() + self.up_b.len())
    }

    /// From `down` `[r, d]`, `down_b` `[r]`, `up` `[d, r]`, `up_b` `[d]`, row-major.
    pub fn new(down: &[f32], down_b: &[f32], up: &[f32], up_b: &[f32], r: usize, d: usize) -> Self {
        let rp = r.div_ceil(16) * 16;
        let mut down_t = vec![0f32; d * rp];
        let mut up_t = vec![0f32; r * d];
        for j in 0..r {
            for c in 0..d {
                down_t[c * rp + j] = down[j * d + c];
                up_t[j * d + c] = up[c * r + j];
            }
        }
        let mut db = vec![0f32; rp];
        db[..r].copy_from_slice(down_b);
        BottleneckWeights {
            d,
            r,
            rp,
            down_t,
            down_b: db,
            up_t,
            up_b: up_b.to_vec(),
        }
    }
}

/// `o = t + b_U + U act(D x + b_D)` for `rows` rows of `d` values (see
/// [`bottleneck`]), four rows at a time so that every weight loaded
/// serves four rows: the down projection runs over the input's values (16 hidden
/// values per register, two independent sums per row), the up projection keeps four
/// 16-lane blocks of each of the four output rows in registers while the hidden
/// values go by.
///
/// # Safety
/// The CPU has AVX-512F; `o`, `t` and `xs` hold `rows · w.d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bottleneck_rows_avx512(
    o: *mut f32,
    t: *const f32,
    xs: *const f32,
    rows: usize,
    w: &BottleneckWeights,
    act: Epilogue,
) {
    let mut z = vec![0f32; 4 * w.rp];
    let mut i = 0;
    while i < rows {
        let m = (rows - i).min(4);
        let at = i * w.d;
        // SAFETY: rows i..i+m lie inside the caller's buffers.
        unsafe {
            let (o, t, x) = (o.add(at), t.add(at), xs.add(at));
            match m {
                4 => bottleneck_block::<4>(o, t, x, w, act, &mut z),
                3 => bottleneck_block::<3>(o, t, x, w, act, &mut z),
                2 => bottleneck_block::<2>(o, t, x, w, act, &mut z),
                _ => bottleneck_block::<1>(o, t, x, w, act, &mut z),
            }
        }
        i += m;
    }
}

/// `R` rows of [`bottleneck_rows_avx512`]; `z` holds `R · w.rp` hidden values.
///
/// # Safety
/// The CPU has AVX-512F; `o`, `t` and `xs` hold `R · w.d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bottleneck_block<const R: usize>(
    o: *mut f32,
    t: *const f32,
    xs: *const f32,
    w: &BottleneckWeights,
    act: Epilogue,
    z: &mut [f32],
) {
    let (d, r, rp) = (w.d, w.r, w.rp);
    let (dt, db, ut, ub) = (
        w.down_t.as_ptr(),
        w.down_b.as_ptr(),
        w.up_t.as_ptr(),
        w.up_b.as_ptr(),
    );
    // SAFETY: the caller's contract for o, t, xs; the weights' lengths are d·rp, rp,
    // r·d and d; z holds R·rp; every access past d in a row is masked.
    unsafe {
        let zp = z.as_mut_ptr();
        for jb in (0..rp).step_by(16) {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            let mut k = 0;
            while k + 2 <= d {
                let w0 = _mm512_loadu_ps(dt.add(k * rp + jb));
                let w1 = _mm512_loadu_ps(dt.add((k + 1) * rp + jb));
                for (rr, acc) in acc.iter_mut().enumerate() {
                    let x = xs.add(rr * d + k);
                    acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*x), w0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(1)), w1, acc[1]);
                }
                k += 2;
            }
            if k < d {
                let w0 = _mm512_loadu_ps(dt.add(k * rp + jb));
                for (rr, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*xs.add(rr * d + k)), w0, acc[0]);
                }
            }
            let bias = _mm512_loadu_ps(db.add(jb));
            for (rr, acc) in acc.iter().enumerate() {
                let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), bias);
                _mm512_storeu_ps(zp.add(rr * rp + jb), sum);
            }
        }
        for rr in 0..R {
            activate(&mut z[rr * rp..][..r], act);
        }
        let zp = z.as_ptr();
        for cb in (0..d).step_by(64) {
            let masks: [u16; 4] =
                std::array::from_fn(|v| lane_mask((d - cb).saturating_sub(16 * v)));
            let col = |v: usize| (cb + 16 * v).min(d);
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            for (rr, acc) in acc.iter_mut().enumerate() {
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_add_ps(
                        _mm512_maskz_loadu_ps(masks[v], t.add(rr * d + col(v))),
                        _mm512_maskz_loadu_ps(masks[v], ub.add(col(v))),
                    );
                }
            }
            for j in 0..r {
                let row = ut.add(j * d);
                let u: [__m512; 4] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], row.add(col(v))));
                for (rr, acc) in acc.iter_mut().enumerate() {
                    let bz = _mm512_set1_ps(*zp.add(rr * rp + j));
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(bz, u[v], *acc);
                    }
                }
            }
            for (rr, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(o.add(rr * d + col(v)), masks[v], *acc);
                }
            }
        }
    }
}

/// Rows of [`bottleneck`] (the portable loop): `o = t + b_U + U act(D x + b_D)` per
/// row of `w.d` values, through `w`'s transposed layout; `z` is `[w.rp]` scratch.
#[inline(always)]
fn bottleneck_rows_body(
    o: &mut [MaybeUninit<f32>],
    t: &[f32],
    xs: &[f32],
    w: &BottleneckWeights,
    z: &mut [f32],
    act: Epilogue,
) {
    let (d, r, rp) = (w.d, w.r, w.rp);
    for ((o, t), xr) in o.chunks_mut(d).zip(t.chunks(d)).zip(xs.chunks(d)) {
        z.copy_from_slice(&w.down_b);
        for (k, xk) in xr.iter().enumerate() {
            axpy_body(z, *xk, &w.down_t[k * rp..][..rp]);
        }
        activate(&mut z[..r], act);
        for ((o, t), b) in o.iter_mut().zip(t).zip(&w.up_b) {
            o.write(t + b);
        }
        // SAFETY: every element of the row was written just above, and
        // MaybeUninit<f32> has f32's layout.
        let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
        for (j, &zj) in z[..r].iter().enumerate() {
            axpy_body(o, zj, &w.up_t[j * d..][..d]);
        }
    }
}
multiversion!(bottleneck_rows, bottleneck_rows_body, (o: &mut [MaybeUninit<f32>], t: &[f32], xs: &[f32], w: &BottleneckWeights, z: &mut [f32], act: Epilogue));

/// `out = t + b_U + U act(D x + b_D)` for every row of `t` and `xs` (`n · w.d`
/// values each), on the rayon pool; every element of `out` is written.
pub fn bottleneck(
    out: &mut [MaybeUninit<f32>],
    t: &[f32],
    xs: &[f32],
    w: &BottleneckWeights,
    act: Epilogue,
) {
    bottleneck_on(out, t, xs, w, act, features::avx512())
}

/// [`bottleneck`] through the AVX-512 rows (`avx512`, which the caller has checked)
/// or the portable loop.
pub(crate) fn bottleneck_on(
    out: &mut [MaybeUninit<f32>],
    t: &[f32],
    xs: &[f32],
    w: &BottleneckWeights,
    act: Epilogue,
    avx512: bool,
) {
    let d = w.d;
    assert!(
        out.len() == t.len() && t.len() == xs.len() && t.len().is_multiple_of(d.max(1)),
        "bottleneck: out {}, target {}, x {} values for rows of {d}",
        out.len(),
        t.len(),
        xs.len()
    );
    // Rows per task: enough that a task is worth handing to the pool.
    let per_task = (8192 / (w.r * d).max(1)).clamp(4, 64);
    out.par_chunks_mut(per_task * d)
        .zip(t.par_chunks(per_task * d).zip(xs.par_chunks(per_task * d)))
        .for_each(|(o, (t, xs))| {
            if avx512 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller checked AVX-512F (`features::avx512()`); the
                // three chunks hold the same whole rows.
                unsafe {
                    bottleneck_rows_avx512(
                        o.as_mut_ptr() as *mut f32,
                        t.as_ptr(),
                        xs.as_ptr(),
                        t.len() / d,
                        w,
                        act,
                    )
                };
            } else {
                let mut z = vec![0f32; w.rp];
                bottleneck_rows(o, t, xs, w, &mut z, act);
            }
        });
}

#[cfg(target_arch = "x86_64")]
use super::vector::lane_mask;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
