//! int8 quantisation: the frozen weights once, as one or two int8 planes per output
//! column with optional per-channel smoothing (SmoothQuant, α = ½), and the
//! activations per row at run time, to uint8 (asymmetric) or, for rows with far
//! outlier channels, to 16 bits split into two uint8 rows. See [`super::matmul`] for
//! how the micro-kernels use them.

use rayon::prelude::*;

use super::features;
use super::matmul::NR;

/// A weight `[o, k]` in int8 for the VNNI micro-kernels.
#[derive(Debug)]
pub(crate) struct Int8Weight {
    /// Panel `p`, quad `q`, plane `h`, lane `j` at `((p·k4 + q)·planes + h)·NR + j`:
    /// four int8 values (first in the low byte) of `W[p·NR + j, 4q .. 4q + 4]`: plane
    /// 0 `round(W / scale)`, plane 1 (when `planes` is 2) the remainder in steps of
    /// `scale / LO`.
    pub(crate) q: Vec<u32>,
    /// 1 or 2.
    pub(crate) planes: usize,
    /// Per input channel: `1 / s_j` applied to the activations (None: no smoothing).
    pub(crate) smooth: Option<Vec<f32>>,
    /// Per output column (padded to whole panels): max |W[c, :]| / 127.
    pub(crate) scale: Vec<f32>,
    /// Per panel, plane and column (`(p·planes + h)·NR + j`): the sum of its int8
    /// values (for the zero point).
    pub(crate) colsum: Vec<i32>,
}

impl Int8Weight {
    /// Quantises `w` (`[o, k]` row-major) to `planes` int8 planes; `ranges` (max |x_j|
    /// of each input channel on sample inputs) turns on per-channel smoothing.
    pub(crate) fn pack(
        w: &[f32],
        o: usize,
        k: usize,
        planes: usize,
        ranges: Option<&[f32]>,
    ) -> Self {
        let panels = o.div_ceil(NR);
        let s = ranges.map(|r| smoothing(w, o, k, r));
        let smoothed: Vec<f32>;
        let w = match &s {
            Some(s) => {
                smoothed = w
                    .chunks(k)
                    .flat_map(|row| row.iter().zip(s).map(|(v, s)| v * s))
                    .collect();
                &smoothed[..]
            }
            None => w,
        };
        let k4 = k.div_ceil(4);
        let mut scale = vec![0f32; panels * NR];
        let mut colsum = vec![0i32; panels * planes * NR];
        let mut d = vec![0u32; panels * k4 * planes * NR];
        d.par_chunks_mut(k4 * planes * NR)
            .zip(
                scale
                    .par_chunks_mut(NR)
                    .zip(colsum.par_chunks_mut(planes * NR)),
            )
            .enumerate()
            .for_each(|(p, (panel, (sc, cs)))| {
                for j in 0..NR.min(o - p * NR) {
                    let row = &w[(p * NR + j) * k..][..k];
                    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = if amax > 0.0 && amax.is_finite() {
                        amax / 127.0
                    } else {
                        1.0
                    };
                    sc[j] = s;
                    let (mut sum_hi, mut sum_lo) = (0i32, 0i32);
                    for q in 0..k4 {
                        let (mut hi, mut lo) = (0u32, 0u32);
                        for b in 0..4 {
                            let Some(v) = row.get(4 * q + b) else {
                                continue;
                            };
                            let qh = (v / s).round().clamp(-127.0, 127.0);
                            let ql = ((v / s - qh) * LO).round().clamp(-127.0, 127.0);
                            let (qh, ql) = (qh as i32, ql as i32);
                            sum_hi += qh;
                            sum_lo += ql;
                            hi |= ((qh as i8 as u8) as u32) << (8 * b);
                            lo |= ((ql as i8 as u8) as u32) << (8 * b);
                        }
                        panel[(planes * q) * NR + j] = hi;
                        if planes == 2 {
                            panel[(2 * q + 1) * NR + j] = lo;
                        }
                    }
                    cs[j] = sum_hi;
                    if planes == 2 {
                        cs[NR + j] = sum_lo;
                    }
                }
            });
        Int8Weight {
            q: d,
            planes,
            smooth: s.map(|s| s.iter().map(|v| 1.0 / v).collect()),
            scale,
            colsum,
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.q.len() * 4
            + self.scale.len() * 4
            + self.colsum.len() * 4
            + self.smooth.as_ref().map_or(0, |s| s.len() * 4)
    }
}

/// The second weight plane's step, as a fraction of the first's.
pub(crate) const LO: f32 = 254.0;

/// Per-row quantisation of the activations: `x ≈ scale · (q − zero)`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct RowQ {
    pub(crate) scale: f32,
    pub(crate) zero: i32,
    /// The rounding error (`scale·√(k/12)`) exceeds [`COARSE`] of the row's norm.
    pub(crate) coarse: bool,
}

/// The relative rounding error of a row above which it is quantised to 16 bits. On
/// MiniLM over SciFact documents 2.5% sends 3–4% of the rows to f32 ([CLS], [SEP] and
/// a few others) and keeps every embedding within 0.9998 cosine of f32; 5% would
/// leave the rows of an empty text at 0.998.
pub(crate) const COARSE: f32 = 0.025;

/// Quantises each row of `x` `[n, k]` to uint8 with its own scale and zero point
/// (covering the row's min..max, 0 included); returns the rows as `⌈k/4⌉` quads each.
pub(crate) fn quantize_rows(
    x: &[f32],
    n: usize,
    k: usize,
    smooth: Option<&[f32]>,
) -> (Vec<u32>, Vec<RowQ>) {
    let k4 = k.div_ceil(4);
    let mut q = vec![0u32; n * k4];
    let mut rows = vec![RowQ::default(); n];
    q.par_chunks_mut(k4 * 16)
        .zip(rows.par_chunks_mut(16).zip(x.par_chunks(k * 16)))
        .for_each(|(q, (rows, x))| quantize_chunk(q, rows, x, k, smooth));
    (q, rows)
}

/// [`quantize_rows`] for one chunk of rows, compiled for AVX-512 where the CPU has
/// it (the smoothing and norm loops then vectorise to it).
fn quantize_chunk(q: &mut [u32], rows: &mut [RowQ], x: &[f32], k: usize, smooth: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if features::avx512_bw() {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn fast(
            q: &mut [u32],
            rows: &mut [RowQ],
            x: &[f32],
            k: usize,
            smooth: Option<&[f32]>,
        ) {
            quantize_chunk_body(q, rows, x, k, smooth)
        }
        // SAFETY: `features::avx512_bw()` said the CPU has what `fast` was compiled for.
        return unsafe { fast(q, rows, x, k, smooth) };
    }
    quantize_chunk_body(q, rows, x, k, smooth)
}

#[inline(always)]
fn quantize_chunk_body(
    q: &mut [u32],
    rows: &mut [RowQ],
    x: &[f32],
    k: usize,
    smooth: Option<&[f32]>,
) {
    let k4 = k.div_ceil(4);
    let mut scaled = Vec::new();
    for ((qrow, rq), xrow) in q.chunks_mut(k4).zip(rows).zip(x.chunks(k)) {
        let row = match smooth {
            None => xrow,
            Some(inv) => {
                scaled.clear();
                scaled.extend(xrow.iter().zip(inv).map(|(v, s)| v * s));
                &scaled[..]
            }
        };
        *rq = quantize_row(qrow, row);
        rq.coarse = rq.scale * (k as f32 / 12.0).sqrt() > COARSE * norm(row);
    }
}

/// Quantises the rows `which` of `x` `[n, k]` (after smoothing) to 16 bits,
/// `x ≈ s·(v − z)` with `v` in 0..=65535, and splits each into two uint8 rows of
/// `⌈k/4⌉` quads: the high bytes (scale 256·s, zero z >> 8) and the low bytes (scale
/// s, zero z & 255), whose products with a weight sum to the 16-bit one.
pub(crate) fn quantize_rows16(
    x: &[f32],
    which: &[usize],
    k: usize,
    smooth: Option<&[f32]>,
) -> (Vec<u32>, Vec<RowQ>) {
    let k4 = k.div_ceil(4);
    let mut q = vec![0u32; 2 * which.len() * k4];
    let mut rows = Vec::with_capacity(2 * which.len());
    for (i, r) in which.iter().enumerate() {
        let xrow = &x[r * k..][..k];
        let row: Vec<f32> = match smooth {
            None => xrow.to_vec(),
            Some(inv) => xrow.iter().zip(inv).map(|(v, s)| v * s).collect(),
        };
        let (lo, hi) = row
            .iter()
            .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let scale = if hi > lo { (hi - lo) / 65535.0 } else { 1.0 };
        let zero = (-lo / scale).round().clamp(0.0, 65535.0) as i32;
        let inv = 1.0 / scale;
        let (qh, ql) = q[2 * i * k4..][..2 * k4].split_at_mut(k4);
        // SAFETY: reinterpreting the u32 quads as their bytes (same memory).
        let bh = unsafe { std::slice::from_raw_parts_mut(qh.as_mut_ptr() as *mut u8, k4 * 4) };
        let bl = unsafe { std::slice::from_raw_parts_mut(ql.as_mut_ptr() as *mut u8, k4 * 4) };
        for ((h, l), v) in bh.iter_mut().zip(bl.iter_mut()).zip(&row) {
            let u = ((v * inv).round_ties_even() + zero as f32).clamp(0.0, 65535.0) as u32;
            *h = (u >> 8) as u8;
            *l = (u & 255) as u8;
        }
        rows.push(RowQ {
            scale: 256.0 * scale,
            zero: zero >> 8,
            coarse: false,
        });
        rows.push(RowQ {
            scale,
            zero: zero & 255,
            coarse: false,
        });
    }
    (q, rows)
}

pub(crate) fn quantize_row(q: &mut [u32], x: &[f32]) -> RowQ {
    #[cfg(target_arch = "x86_64")]
    if features::avx512_bw() {
        // SAFETY: `features::avx512_bw()` said the CPU has AVX-512F and BW; `q` has
        // ⌈len/4⌉ quads.
        return unsafe { quantize_row_avx512(q, x) };
    }
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let rq = row_params(lo, hi);
    let inv = 1.0 / rq.scale;
    // SAFETY: reinterpreting the u32 quads as their bytes (same memory, u8 alignment).
    let bytes = unsafe { std::slice::from_raw_parts_mut(q.as_mut_ptr() as *mut u8, q.len() * 4) };
    for (b, v) in bytes.iter_mut().zip(x) {
        *b = quantize_one(*v, inv, rq.zero);
    }
    rq
}

/// SmoothQuant factors (α = ½): `s_j = √(range_j / max_i |W[i, j]|)`, kept within
/// [1/64, 64] and 1 where a channel or column is all zero.
fn smoothing(w: &[f32], o: usize, k: usize, ranges: &[f32]) -> Vec<f32> {
    let mut wmax = vec![0f32; k];
    for row in w.chunks(k).take(o) {
        for (m, v) in wmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    ranges
        .iter()
        .zip(&wmax)
        .map(|(r, m)| {
            if *r > 0.0 && *m > 0.0 && r.is_finite() {
                (r / m).sqrt().clamp(1.0 / 64.0, 64.0)
            } else {
                1.0
            }
        })
        .collect()
}

/// The Euclidean norm, with independent partial sums so that it vectorises.
#[inline(always)]
fn norm(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    (acc.iter().sum::<f32>() + tail).sqrt()
}

/// Scale and zero point of a row whose values span `lo..=hi` (with `lo ≤ 0 ≤ hi`).
fn row_params(lo: f32, hi: f32) -> RowQ {
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    RowQ {
        scale,
        zero: (-lo / scale).round().clamp(0.0, 255.0) as i32,
        coarse: false,
    }
}

/// One value: round to nearest (ties to even, as the vector path), clamp to 0..=255.
fn quantize_one(v: f32, inv: f32, zero: i32) -> u8 {
    ((v * inv).round_ties_even() + zero as f32).clamp(0.0, 255.0) as u8
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(q: &mut [u32], x: &[f32]) -> RowQ {
    // SAFETY: loads stay inside `x` (tails are scalar); stores of 16 bytes go to
    // quad 4i..4i+4 of `q`, which holds ⌈len/4⌉ ≥ 4i + 4 quads for full blocks.
    unsafe {
        let full = x.len() / 16;
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for i in 0..full {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (mut l, mut h) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        for v in &x[16 * full..] {
            l = l.min(*v);
            h = h.max(*v);
        }
        let rq = row_params(l, h);
        let inv = 1.0 / rq.scale;
        let (vinv, vz) = (_mm512_set1_ps(inv), _mm512_set1_epi32(rq.zero));
        let (vmin, vmax) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        let out = q.as_mut_ptr() as *mut u8;
        for i in 0..full {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * i));
            // cvtps rounds to nearest even (the default MXCSR mode).
            let r = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vz);
            let r = _mm512_min_epi32(_mm512_max_epi32(r, vmin), vmax);
            _mm_storeu_si128(out.add(16 * i) as *mut __m128i, _mm512_cvtepi32_epi8(r));
        }
        for (j, v) in x.iter().enumerate().skip(16 * full) {
            *out.add(j) = quantize_one(*v, inv, rq.zero);
        }
        rq
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_rows_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 10.0) * 0.37).collect();
        let mut q = vec![0u32; 10];
        let rq = quantize_row(&mut q, &x);
        let bytes: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (v, b) in x.iter().zip(&bytes) {
            let back = rq.scale * (*b as i32 - rq.zero) as f32;
            assert!((back - v).abs() <= 0.5 * rq.scale + 1e-6, "{v} → {back}");
        }
        // A zero row stays zero.
        let rq = quantize_row(&mut q, &[0.0; 37]);
        assert_eq!(rq.zero, 0);
    }
}
