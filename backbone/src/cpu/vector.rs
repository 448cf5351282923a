//! Small vector loops shared by the other kernels: lane-parallel reductions and
//! fused adds, written with independent accumulators so that they vectorise (float
//! sums are not reassociated by the compiler).

use super::features::multiversion;

/// Lanes of the manual reductions.
pub(crate) const LANES: usize = 16;

#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    acc.iter().fold(m, |a, &b| if b > a { b } else { a })
}

#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// Σ x², lane-parallel.
#[inline(always)]
pub(crate) fn sum_sq(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i] * c[i];
        }
    }
    chunks.remainder().iter().map(|v| v * v).sum::<f32>() + acc.iter().sum::<f32>()
}

#[inline(always)]
fn add_to3_body(o: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    for (((o, a), b), c) in o.iter_mut().zip(a).zip(b).zip(c) {
        *o = a + b + c;
    }
}

#[inline(always)]
fn add_assign_body(o: &mut [f32], a: &[f32]) {
    for (o, a) in o.iter_mut().zip(a) {
        *o += a;
    }
}

/// `o += s · a`.
#[inline(always)]
pub(crate) fn axpy_body(o: &mut [f32], s: f32, a: &[f32]) {
    for (o, a) in o.iter_mut().zip(a) {
        *o += s * a;
    }
}

multiversion!(pub add_to3, add_to3_body, (o: &mut [f32], a: &[f32], b: &[f32], c: &[f32]));
multiversion!(pub add_assign, add_assign_body, (o: &mut [f32], a: &[f32]));

/// The mask of the first `min(n, 16)` lanes of a 16-lane register.
#[inline(always)]
pub(crate) fn lane_mask(n: usize) -> u16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as u16
    }
}
