//! Activations: the epilogue fused after a linear, exact (erf) GELU, SiLU, tanh and
//! ReLU over slices; the scalar `exp` and `erf` the other kernels share; GELU's
//! derivative for training.

use rayon::prelude::*;

use super::features::{self, multiversion};

/// Activation fused after a linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact (erf) GELU.
    Gelu,
    Relu,
    /// `x σ(x)` (SiLU).
    Swish,
    Tanh,
}

/// An activation over a slice, on the calling thread.
pub fn activate(xs: &mut [f32], epi: Epilogue) {
    match epi {
        Epilogue::None => {}
        Epilogue::Gelu => gelu(xs),
        Epilogue::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
        Epilogue::Swish => swish(xs),
        Epilogue::Tanh => tanh(xs),
    }
}

/// [`activate`] on the rayon pool, in blocks of 4,096 values.
pub fn activate_par(out: &mut [f32], epi: Epilogue) {
    if epi != Epilogue::None {
        out.par_chunks_mut(4096).for_each(|c| activate(c, epi));
    }
}

/// `e^x` for f32 to about 2 ulp: range reduction by ln 2, a degree-6 polynomial,
/// and the exponent set by bit arithmetic; inputs are clamped to [-87, 88].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding and subtracting it rounds to nearest without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // t's low mantissa bits hold n (offset by 2^22): integer arithmetic builds 2^n
    // without a float-to-int conversion, so the loops that call this vectorise.
    let bits = (t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23;
    p * f32::from_bits(bits)
}

/// erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - p * exp(-a * a)).copysign(x)
}

#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn swish_body(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v /= 1.0 + exp(-*v);
    }
}

#[inline(always)]
fn tanh_body(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        // tanh x = 1 - 2 / (e^{2x} + 1), exact at both tails after clamping.
        *v = 1.0 - 2.0 / (exp(2.0 * *v) + 1.0);
    }
}

/// Exact GELU in place: the AVX-512 loop where the CPU has it.
pub fn gelu(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if features::avx512() {
        // SAFETY: `features::avx512()` said the CPU has AVX-512F.
        return unsafe { gelu_avx512(xs) };
    }
    gelu_portable(xs)
}
multiversion!(pub(crate) gelu_portable, gelu_body, (xs: &mut [f32]));
multiversion!(pub swish, swish_body, (xs: &mut [f32]));
multiversion!(pub tanh, tanh_body, (xs: &mut [f32]));

/// `g ← g · GELU'(x)` (exact GELU's derivative), on the rayon pool.
pub fn gelu_backward(g: &mut [f32], x: &[f32]) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    g.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(g, x)| {
            for (g, &x) in g.iter_mut().zip(x) {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
                *g *= cdf + x * pdf;
            }
        });
}

#[cfg(target_arch = "x86_64")]
use super::vector::lane_mask;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `e^x` on 16 lanes: the scalar [`exp`] (range reduction by ln 2, a
/// degree-6 polynomial, the exponent built with integer arithmetic).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp512(x: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0;
    let s = _mm512_set1_ps;
    let x = _mm512_min_ps(_mm512_max_ps(x, s(-87.0)), s(88.0));
    let t = _mm512_fmadd_ps(x, s(std::f32::consts::LOG2_E), s(ROUND));
    let n = _mm512_sub_ps(t, s(ROUND));
    let r = _mm512_fnmadd_ps(n, s(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, s(1.428_606_8e-6), r);
    let mut p = s(0.001_388_889);
    for c in [0.008_333_334, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, s(c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000)),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(bits))
}

/// Exact (erf) GELU in place, 16 lanes at a time (masked tail). erf is a rational
/// minimax approximation, `x·P(x²) / Q(x²)` on [−4, 4] (degrees 13 and 8; within
/// 1e-7 of erf), its division a reciprocal estimate and one Newton step: no
/// exponential. Beyond ±3.9, where erf rounds to ±1 in f32, it is ±1 exactly.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    const P: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const Q: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let n = xs.len();
    let s = _mm512_set1_ps;
    let p = xs.as_mut_ptr();
    let mut i = 0;
    while i < n {
        let k = lane_mask(n - i);
        // SAFETY: the load and store are masked to the slice's n values.
        unsafe {
            let x = _mm512_maskz_loadu_ps(k, p.add(i));
            let u = _mm512_mul_ps(x, s(std::f32::consts::FRAC_1_SQRT_2));
            let u = _mm512_min_ps(_mm512_max_ps(u, s(-4.0)), s(4.0));
            let u2 = _mm512_mul_ps(u, u);
            let mut num = s(P[0]);
            for c in &P[1..] {
                num = _mm512_fmadd_ps(num, u2, s(*c));
            }
            num = _mm512_mul_ps(num, u);
            let mut den = s(Q[0]);
            for c in &Q[1..] {
                den = _mm512_fmadd_ps(den, u2, s(*c));
            }
            let r = _mm512_rcp14_ps(den);
            // One Newton step: r·(2 − d·r), to ~1e-7 relative.
            let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, s(2.0)));
            // Beyond ±3.9 erf rounds to ±1 in f32: set it exactly, so that GELU is
            // exactly 0 far on the negative side, as the exact function.
            let one = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32(i32::MIN)),
                _mm512_castps_si512(s(1.0)),
            ));
            let tail = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(u), s(3.9));
            let erf = _mm512_mask_blend_ps(tail, _mm512_mul_ps(num, r), one);
            let half_x = _mm512_mul_ps(x, s(0.5));
            _mm512_mask_storeu_ps(p.add(i), k, _mm512_fmadd_ps(half_x, erf, half_x));
        }
        i += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_match_reference_values() {
        // erf at a few points (from tables), to the approximation's 1.5e-7 bound.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.0, -0.842_700_8),
        ] {
            let got = erf(x);
            assert!((got - e).abs() < 3e-7, "erf({x}) = {got} vs {e}");
        }
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}) = {got} vs {want}"
            );
        }
        assert!(
            exp(-1e9) < 1e-37,
            "very negative inputs give a negligible value"
        );
    }

    #[test]
    fn vector_gelu_matches_the_portable_loop() {
        // Both tails, zero, the tail of a slice that is not a multiple of 16 lanes,
        // and large magnitudes (where e^(−x²/2) would underflow).
        let xs: Vec<f32> = (-4000..=4001)
            .map(|i| i as f32 / 200.0)
            .chain([1e4, -1e4, 0.0])
            .collect();
        let (mut fast, mut slow) = (xs.clone(), xs.clone());
        gelu(&mut fast);
        gelu_portable(&mut slow);
        for ((x, f), s) in xs.iter().zip(&fast).zip(&slow) {
            assert!(
                (f - s).abs() <= 2e-6 * s.abs().max(1.0),
                "gelu({x}) = {f} vs {s}"
            );
        }
    }
}
