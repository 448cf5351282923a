//! Fused CPU kernels for the serving path (f32, contiguous): linear with bias (and
//! GELU), masked multi-head attention, residual add + LayerNorm. candle's
//! element-wise ops run on one thread and its attention materialises a
//! `[batch, heads, t, t]` tensor; these run on the rayon pool, skip padded keys, and
//! keep each head's scores in cache. Training uses the differentiable candle ops.

use candle_core::{Device, Result, Storage, Tensor};
use gemm::{gemm, Parallelism};

use crate::packed::{BottleneckWeights, PackedWeight};
use rayon::prelude::*;
use std::sync::Arc;

/// Runs `f` over the f32 contents of a CPU tensor (made contiguous first).
/// [`with_slice`] of an optional tensor.
fn with_opt_slice<R>(t: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> R) -> Result<R> {
    match t {
        Some(t) => with_slice(t, |s| f(Some(s))),
        None => Ok(f(None)),
    }
}

fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cpu) => {
            let s = cpu.as_slice::<f32>()?;
            let o = layout.start_offset();
            Ok(f(&s[o..o + t.elem_count()]))
        }
        _ => candle_core::bail!("fused kernels run on the CPU only"),
    }
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Products below this many multiply-adds run on the calling thread: handing an
/// adapter's small per-group matmul to the pool costs more than it saves.
const SERIAL_BELOW: usize = 1 << 20;

fn threads_for(macs: usize) -> Parallelism {
    if macs < SERIAL_BELOW {
        Parallelism::None
    } else {
        threads()
    }
}

/// A pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

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

/// Whether the fused kernels can stand in for candle ops on these tensors: all on the
/// CPU, f32, and none a trainable variable (the kernels record no gradient).
pub fn usable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.is_variable())
}

fn apply_epilogue(out: &mut [f32], epi: Epilogue) {
    match epi {
        Epilogue::None => {}
        Epilogue::Gelu => out.par_chunks_mut(4096).for_each(simd::gelu),
        Epilogue::Relu => out
            .par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0))),
        Epilogue::Swish => out.par_chunks_mut(4096).for_each(simd::swish),
        Epilogue::Tanh => out.par_chunks_mut(4096).for_each(simd::tanh),
    }
}

/// An activation over a slice, on the calling thread.
pub(crate) fn activate_slice(xs: &mut [f32], epi: Epilogue) {
    match epi {
        Epilogue::None => {}
        Epilogue::Gelu => simd::gelu(xs),
        Epilogue::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
        Epilogue::Swish => simd::swish(xs),
        Epilogue::Tanh => simd::tanh(xs),
    }
}

/// An activation over a tensor, on the rayon pool.
pub fn activate(x: &Tensor, epi: Epilogue) -> Result<Tensor> {
    let mut out = with_slice(x, |s| s.to_vec())?;
    apply_epilogue(&mut out, epi);
    Tensor::from_vec(out, x.dims(), &Device::Cpu)
}

/// `x Wᵀ + b` for `x` `[..., k]`, `w` `[o, k]`, `b` `[o]`, then the epilogue.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, epi: Epilogue) -> Result<Tensor> {
    fused_linear(None, x, w, None, Some(b), 1.0, epi)
}

/// [`linear`] through `packed` (the same `w`, packed at load) when given.
pub(crate) fn linear_packed(
    x: &Tensor,
    w: &Tensor,
    packed: Option<&PackedWeight>,
    b: &Tensor,
    epi: Epilogue,
) -> Result<Tensor> {
    fused_linear(None, x, w, packed, Some(b), 1.0, epi)
}

/// `target + scale · x Wᵀ (+ b)`: the addition happens inside the matmul.
pub fn add_linear(
    target: &Tensor,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    scale: f32,
) -> Result<Tensor> {
    fused_linear(Some(target), x, w, None, b, scale, Epilogue::None)
}

fn fused_linear(
    target: Option<&Tensor>,
    x: &Tensor,
    w: &Tensor,
    packed: Option<&PackedWeight>,
    b: Option<&Tensor>,
    scale: f32,
    epi: Epilogue,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank >= 1");
    let n = x.elem_count() / k;
    let (o, wk) = w.dims2()?;
    if wk != k {
        candle_core::bail!("linear: input has {k} features, weight expects {wk}");
    }
    if let Some(t) = target {
        if t.elem_count() != n * o {
            candle_core::bail!(
                "linear: target has {} elements, expected {}",
                t.elem_count(),
                n * o
            );
        }
    }
    let out = if let Some(pw) = packed {
        if pw.dims() != (o, k) {
            candle_core::bail!("linear: packed weight is {:?}, not [{o}, {k}]", pw.dims());
        }
        match target {
            // Written in place, activation included: no zero-fill, no second pass.
            None => {
                let mut out: Vec<f32> = Vec::with_capacity(n * o);
                let dst = &mut out.spare_capacity_mut()[..n * o];
                with_slice(x, |xs| {
                    with_opt_slice(b, |bs| pw.matmul_into(xs, n, dst, bs, scale, epi))
                })??;
                // SAFETY: `matmul_into` wrote all n·o elements.
                unsafe { out.set_len(n * o) };
                out
            }
            Some(t) => {
                let mut out = with_slice(t, |t| t.to_vec())?;
                with_slice(x, |xs| {
                    with_opt_slice(b, |bs| pw.matmul(xs, n, &mut out, true, bs, scale))
                })??;
                apply_epilogue(&mut out, epi);
                out
            }
        }
    } else {
        let mut out = match target {
            Some(t) => with_slice(t, |t| t.to_vec())?,
            None => vec![0f32; n * o],
        };
        let macs = n * o * k;
        if let Some(b) = b {
            with_slice(b, |b| {
                let add = |row: &mut [f32]| row.iter_mut().zip(b).for_each(|(r, b)| *r += b);
                if macs < SERIAL_BELOW {
                    out.chunks_mut(o).for_each(add);
                } else {
                    out.par_chunks_mut(o).for_each(add);
                }
            })?;
        }
        let read_dst = target.is_some() || b.is_some();
        with_slice(x, |xs| {
            with_slice(w, |ws| {
                // SAFETY: pointers and strides describe the three buffers exactly:
                // dst [n, o] row-major, lhs [n, k] row-major, rhs = Wᵀ, i.e. W [o, k] read
                // with row stride 1 and column stride k.
                unsafe {
                    gemm(
                        n,
                        o,
                        k,
                        out.as_mut_ptr(),
                        1,
                        o as isize,
                        read_dst,
                        xs.as_ptr(),
                        1,
                        k as isize,
                        ws.as_ptr(),
                        k as isize,
                        1,
                        1.0,
                        scale,
                        false,
                        false,
                        false,
                        threads_for(macs),
                    )
                }
            })
        })??;
        apply_epilogue(&mut out, epi);
        out
    };
    let mut shape = dims;
    *shape.last_mut().expect("rank >= 1") = o;
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// A bottleneck added to a target, row by row: `target + b_U + U act(D x + b_D)` for
/// `x` and `target` `[..., d]`, `D` `[r, d]`, `U` `[d, r]`. Each row's `r` hidden
/// values stay in registers and the output is written once, in a single pass over
/// both inputs: the adapter's small products cost no zero-filled buffers, no copy of
/// the target and no separate bias and activation passes.
pub fn bottleneck(
    target: &Tensor,
    x: &Tensor,
    down_w: &Tensor,
    down_b: &Tensor,
    up_w: &Tensor,
    up_b: &Tensor,
    act: Epilogue,
) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    bottleneck_on(target, x, [down_w, down_b, up_w, up_b], act, avx512)
}

/// Bytes of transposed bottleneck weights kept between forwards (least recently used
/// dropped beyond): ~0.8 MB per IAA-L adapter at r = 12 on a 384-wide model, so the
/// adapters of the last ~80 distinct tasks served skip the transposition.
const LAYOUT_CACHE_BYTES: usize = 64 << 20;

/// Transposed bottleneck weights by the ids of their four tensors (ids are never
/// reused, so an entry can only go stale, never wrong), with a use stamp each.
#[derive(Default)]
struct LayoutCache {
    map: std::collections::HashMap<[candle_core::TensorId; 4], (Arc<BottleneckWeights>, u64)>,
    bytes: usize,
    clock: u64,
}

static LAYOUTS: std::sync::LazyLock<std::sync::Mutex<LayoutCache>> =
    std::sync::LazyLock::new(Default::default);

/// The [`BottleneckWeights`] of these tensors, from the cache or built (and cached).
fn bottleneck_layout(ts: [&Tensor; 4], r: usize, d: usize) -> Result<Arc<BottleneckWeights>> {
    let key = ts.map(|t| t.id());
    let lock = || LAYOUTS.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut c = lock();
        c.clock += 1;
        let now = c.clock;
        if let Some((w, stamp)) = c.map.get_mut(&key) {
            *stamp = now;
            return Ok(w.clone());
        }
    }
    let [down_w, down_b, up_w, up_b] = ts;
    let w = Arc::new(with_slice(down_w, |dw| {
        with_slice(down_b, |db| {
            with_slice(up_w, |uw| {
                with_slice(up_b, |ub| BottleneckWeights::new(dw, db, uw, ub, r, d))
            })
        })
    })????);
    let mut c = lock();
    let size = w.bytes();
    if size <= LAYOUT_CACHE_BYTES {
        while c.bytes + size > LAYOUT_CACHE_BYTES {
            let Some(oldest) = c.map.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) else {
                break;
            };
            if let Some((old, _)) = c.map.remove(&oldest) {
                c.bytes -= old.bytes();
            }
        }
        c.clock += 1;
        let now = c.clock;
        if c.map.insert(key, (w.clone(), now)).is_none() {
            c.bytes += size;
        }
    }
    Ok(w)
}

/// [`bottleneck`] through the AVX-512 rows or the portable loop.
fn bottleneck_on(
    target: &Tensor,
    x: &Tensor,
    [down_w, down_b, up_w, up_b]: [&Tensor; 4],
    act: Epilogue,
    avx512: bool,
) -> Result<Tensor> {
    let d = *x.dims().last().expect("rank >= 1");
    let n = x.elem_count() / d.max(1);
    let (r, dk) = down_w.dims2()?;
    if dk != d || up_w.dims2()? != (d, r) || down_b.elem_count() != r || up_b.elem_count() != d {
        candle_core::bail!(
            "bottleneck: x [.., {d}] with down {:?}, up {:?}",
            down_w.dims(),
            up_w.dims()
        );
    }
    if target.elem_count() != n * d {
        candle_core::bail!(
            "bottleneck: target has {} elements, expected {}",
            target.elem_count(),
            n * d
        );
    }
    let w = bottleneck_layout([down_w, down_b, up_w, up_b], r, d)?;
    let mut out: Vec<f32> = Vec::with_capacity(n * d);
    let dst = &mut out.spare_capacity_mut()[..n * d];
    // Rows per task: enough that a task is worth handing to the pool.
    let per_task = (8192 / (r * d).max(1)).clamp(4, 64);
    with_slice(target, |t| {
        with_slice(x, |xs| {
            dst.par_chunks_mut(per_task * d)
                .zip(t.par_chunks(per_task * d).zip(xs.par_chunks(per_task * d)))
                .for_each(|(o, (t, xs))| {
                    if avx512 {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the caller checked AVX-512F; the three chunks hold
                        // the same whole rows.
                        unsafe {
                            crate::packed::bottleneck_rows_avx512(
                                o.as_mut_ptr() as *mut f32,
                                t.as_ptr(),
                                xs.as_ptr(),
                                t.len() / d,
                                &w,
                                act,
                            )
                        };
                    } else {
                        let mut z = vec![0f32; w.rp];
                        simd::bottleneck_rows(o, t, xs, &w, &mut z, act);
                    }
                })
        })
    })??;
    // SAFETY: the row loop wrote all n·d elements.
    unsafe { out.set_len(n * d) };
    Tensor::from_vec(out, target.dims(), &Device::Cpu)
}

/// `Σ tables[m][index[m][i]]` for each token i: the word, token-type and position
/// embeddings summed, `[n, d]`, in one pass (no gathered copies, no element-wise ops).
pub(crate) fn embed_sum(tables: [&Tensor; 3], index: [&[u32]; 3]) -> Result<Tensor> {
    let n = index[0].len();
    let d = tables[0].dim(1)?;
    for (t, idx) in tables.iter().zip(index) {
        let rows = t.dim(0)?;
        if t.dim(1)? != d || idx.len() != n {
            candle_core::bail!("embed_sum: tables or index lengths disagree");
        }
        if let Some(bad) = idx.iter().find(|&&i| i as usize >= rows) {
            candle_core::bail!("embedding index {bad} out of range for {rows} rows");
        }
    }
    let mut out = vec![0f32; n * d];
    with_slice(tables[0], |w| {
        with_slice(tables[1], |t| {
            with_slice(tables[2], |p| {
                fn row(tab: &[f32], at: u32, d: usize) -> &[f32] {
                    &tab[at as usize * d..][..d]
                }
                for (i, o) in out.chunks_exact_mut(d).enumerate() {
                    let [a, b, c] = index.map(|idx| idx[i]);
                    simd::add_to3(o, row(w, a, d), row(t, b, d), row(p, c, d));
                }
            })
        })
    })???;
    Tensor::from_vec(out, (n, d), &Device::Cpu)
}

/// Mean of each sequence's first `lengths[i]` token vectors of `h` `[b, t, d]` (the
/// real tokens of a right-padded batch), as one `Vec` per sequence.
pub fn mean_pool(h: &Tensor, lengths: &[usize]) -> Result<Vec<Vec<f32>>> {
    let (b, t, d) = h.dims3()?;
    if lengths.len() != b {
        candle_core::bail!("mean_pool: {} lengths for {b} rows", lengths.len());
    }
    with_slice(h, |hs| {
        (0..b)
            .map(|i| {
                let len = lengths[i].min(t);
                let mut v = vec![0f32; d];
                for row in hs[i * t * d..].chunks_exact(d).take(len) {
                    simd::add_assign(&mut v, row);
                }
                let inv = 1.0 / (len as f32).max(1e-9);
                v.iter_mut().for_each(|x| *x *= inv);
                v
            })
            .collect()
    })
}

/// Multi-head self-attention over packed projections `qkv` `[b, t, 3d]` (q | k | v),
/// where row `i` of the batch has `lengths[i]` real tokens followed by padding.
/// Returns the context `[b, t, d]`; rows of padded positions are zero.
pub fn attention(qkv: &Tensor, lengths: &[usize], heads: usize) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let starts: Vec<usize> = (0..b).map(|i| i * t).collect();
    let lengths: Vec<usize> = lengths.iter().map(|&l| l.min(t)).collect();
    let ctx = attend(qkv, b * t, &starts, &lengths, heads)?;
    Tensor::from_vec(ctx, (b, t, d3 / 3), &Device::Cpu)
}

/// The same over token-packed projections `qkv` `[n, 1, 3d]`: sequence `i` is the
/// `lengths[i]` rows from `starts[i]`, with no padding anywhere. Returns `[n, 1, d]`.
pub fn attention_packed(
    qkv: &Tensor,
    starts: &[usize],
    lengths: &[usize],
    heads: usize,
) -> Result<Tensor> {
    let (n, one, d3) = qkv.dims3()?;
    if one != 1 || starts.iter().zip(lengths).any(|(s, l)| s + l > n) {
        candle_core::bail!("attention_packed: sequences reach past the {n} packed rows");
    }
    let ctx = attend(qkv, n, starts, lengths, heads)?;
    Tensor::from_vec(ctx, (n, 1, d3 / 3), &Device::Cpu)
}

/// Attention of every (sequence, head) over `rows` rows of `qkv` at row stride 3d;
/// sequence `i` is rows `starts[i] .. starts[i] + lengths[i]`.
fn attend(
    qkv: &Tensor,
    rows: usize,
    starts: &[usize],
    lengths: &[usize],
    heads: usize,
) -> Result<Vec<f32>> {
    let d3 = *qkv.dims().last().expect("rank 3");
    let b = lengths.len();
    let d = d3 / 3;
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut ctx = vec![0f32; rows * d];
    let out = SendPtr(ctx.as_mut_ptr());
    let packed_f32 = crate::packed::Precision::F32.supported();
    with_slice(qkv, |src| {
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
                if packed_f32 {
                    // SAFETY: the head's q, k, v rows lie inside `src` at stride 3d;
                    // the context block [len, hd] at row stride d is this job's alone.
                    unsafe {
                        crate::packed::attend_head(
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
                    simd::softmax(row);
                }
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
    })?;
    Ok(ctx)
}

/// `LayerNorm(x + y)` over the last dimension.
pub(crate) fn add_layer_norm(
    x: &Tensor,
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d = *dims.last().expect("rank >= 1");
    let n = x.elem_count();
    if y.elem_count() != n || gamma.elem_count() != d || beta.elem_count() != d {
        candle_core::bail!(
            "add_layer_norm: x {:?}, y {:?}, gamma {:?}, beta {:?}",
            x.dims(),
            y.dims(),
            gamma.dims(),
            beta.dims()
        );
    }
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    with_slice(x, |xs| {
        with_slice(y, |ys| {
            with_slice(gamma, |g| {
                with_slice(beta, |bt| {
                    dst.par_chunks_mut(d)
                        .zip(xs.par_chunks(d).zip(ys.par_chunks(d)))
                        .for_each(|(o, (a, b))| simd::add_layer_norm(o, a, b, g, bt, eps as f32));
                })
            })
        })
    })????;
    // SAFETY: every row of `out` was written by `add_layer_norm`.
    unsafe { out.set_len(n) };
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// Element-wise loops, written branch-free so they vectorise, and compiled twice:
/// for the baseline target and with AVX2+FMA, picked at run time.
pub(crate) mod simd {
    /// Lanes of the manual reductions: float sums are not reassociated by the
    /// compiler, so independent accumulators are what lets them vectorise.
    const LANES: usize = 16;

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

    #[inline(always)]
    fn max(xs: &[f32]) -> f32 {
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
    fn sum(xs: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
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

    #[inline(always)]
    fn add_layer_norm_body(
        o: &mut [std::mem::MaybeUninit<f32>],
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
        let o = unsafe { &mut *(o as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        let mean = sum(o) / d;
        o.iter_mut().for_each(|v| *v -= mean);
        let mut acc = [0f32; LANES];
        let mut chunks = o.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += c[i] * c[i];
            }
        }
        let var =
            (chunks.remainder().iter().map(|v| v * v).sum::<f32>() + acc.iter().sum::<f32>()) / d;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, g), bt) in o.iter_mut().zip(g).zip(bt) {
            *o = *o * inv * g + bt;
        }
    }

    /// Rows of [`super::bottleneck`] (the portable loop): `o = t + b_U + U act(D x + b_D)`
    /// per row of `w.d` values, through `w`'s transposed layout; `z` is `[w.rp]` scratch.
    #[inline(always)]
    fn bottleneck_rows_body(
        o: &mut [std::mem::MaybeUninit<f32>],
        t: &[f32],
        xs: &[f32],
        w: &crate::packed::BottleneckWeights,
        z: &mut [f32],
        act: super::Epilogue,
    ) {
        let (d, r, rp) = (w.d, w.r, w.rp);
        for ((o, t), xr) in o.chunks_mut(d).zip(t.chunks(d)).zip(xs.chunks(d)) {
            z.copy_from_slice(&w.down_b);
            for (k, xk) in xr.iter().enumerate() {
                axpy_body(z, *xk, &w.down_t[k * rp..][..rp]);
            }
            super::activate_slice(&mut z[..r], act);
            for ((o, t), b) in o.iter_mut().zip(t).zip(&w.up_b) {
                o.write(t + b);
            }
            // SAFETY: every element of the row was written just above, and
            // MaybeUninit<f32> has f32's layout.
            let o = unsafe { &mut *(o as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            for (j, &zj) in z[..r].iter().enumerate() {
                axpy_body(o, zj, &w.up_t[j * d..][..d]);
            }
        }
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

    #[inline(always)]
    fn axpy_body(o: &mut [f32], s: f32, a: &[f32]) {
        for (o, a) in o.iter_mut().zip(a) {
            *o += s * a;
        }
    }

    macro_rules! dispatch {
        ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
            pub fn $name($($arg: $ty),*) $(-> $ret)? {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                        $body($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU supports the features `fast` was compiled for.
                        return unsafe { fast($($arg),*) };
                    }
                }
                $body($($arg),*)
            }
        };
    }

    /// Exact GELU in place: the AVX-512 loop where the CPU has it.
    pub fn gelu(xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { crate::packed::gelu_avx512(xs) };
        }
        gelu_portable(xs)
    }
    dispatch!(gelu_portable, gelu_body, (xs: &mut [f32]));
    dispatch!(softmax, softmax_body, (row: &mut [f32]));
    dispatch!(swish, swish_body, (xs: &mut [f32]));
    dispatch!(tanh, tanh_body, (xs: &mut [f32]));
    dispatch!(bottleneck_rows, bottleneck_rows_body, (o: &mut [std::mem::MaybeUninit<f32>], t: &[f32], xs: &[f32], w: &crate::packed::BottleneckWeights, z: &mut [f32], act: super::Epilogue));
    dispatch!(add_to3, add_to3_body, (o: &mut [f32], a: &[f32], b: &[f32], c: &[f32]));
    dispatch!(add_assign, add_assign_body, (o: &mut [f32], a: &[f32]));
    dispatch!(add_layer_norm, add_layer_norm_body, (o: &mut [std::mem::MaybeUninit<f32>], a: &[f32], b: &[f32], g: &[f32], bt: &[f32], eps: f32));
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
            let got = simd::erf(x);
            assert!((got - e).abs() < 3e-7, "erf({x}) = {got} vs {e}");
        }
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let (got, want) = (simd::exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}) = {got} vs {want}"
            );
        }
        assert!(
            simd::exp(-1e9) < 1e-37,
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
        simd::gelu(&mut fast);
        simd::gelu_portable(&mut slow);
        for ((x, f), s) in xs.iter().zip(&fast).zip(&slow) {
            assert!(
                (f - s).abs() <= 2e-6 * s.abs().max(1.0),
                "gelu({x}) = {f} vs {s}"
            );
        }
    }

    #[test]
    fn fused_ops_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (6, 8), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 6, &dev)?;
        let want = x
            .reshape((15, 8))?
            .matmul(&w.t()?)?
            .broadcast_add(&b)?
            .reshape((3, 5, 6))?;
        let got = linear(&x, &w, &b, Epilogue::None)?;
        let diff = (want.clone() - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "linear differs by {diff}");
        for (epi, act) in [
            (Epilogue::Gelu, want.gelu_erf()?),
            (Epilogue::Relu, want.relu()?),
            (Epilogue::Swish, want.silu()?),
            (Epilogue::Tanh, want.tanh()?),
        ] {
            let got = linear(&x, &w, &b, epi)?;
            let diff = (act - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "linear+{epi:?} differs by {diff}");
        }
        let t = Tensor::randn(0f32, 1.0, (3, 5, 6), &dev)?;
        let want = (&t + (x.reshape((15, 8))?.matmul(&w.t()?)? * 0.5)?.reshape((3, 5, 6))?)?;
        let got = add_linear(&t, &x, &w, None, 0.5)?;
        let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "add_linear differs by {diff}");

        // The bottleneck at ragged sizes (r not a multiple of 16 lanes, d not of 16
        // or 64, row counts that leave 3, 2 and 1 rows after the blocks of four),
        // every activation, both the AVX-512 rows and the portable loop.
        for (r, d, (b, t)) in [
            (12, 384, (3, 5)),
            (5, 40, (2, 7)),
            (17, 150, (1, 9)),
            (3, 16, (1, 1)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, t, d), &dev)?;
            let t = Tensor::randn(0f32, 1.0, (b, t, d), &dev)?;
            let dw = Tensor::randn(0f32, 0.2, (r, d), &dev)?;
            let db = Tensor::randn(0f32, 0.2, r, &dev)?;
            let uw = Tensor::randn(0f32, 0.2, (d, r), &dev)?;
            let ub = Tensor::randn(0f32, 0.2, d, &dev)?;
            for epi in [
                Epilogue::Gelu,
                Epilogue::Relu,
                Epilogue::Swish,
                Epilogue::Tanh,
            ] {
                let z = x
                    .reshape((b * x.dim(1)?, d))?
                    .matmul(&dw.t()?)?
                    .broadcast_add(&db)?;
                let z = activate(&z, epi)?;
                let want = (&t + z.matmul(&uw.t()?)?.broadcast_add(&ub)?.reshape(t.dims())?)?;
                let mut paths = vec![false];
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512f") {
                    paths.push(true);
                }
                for avx512 in paths {
                    let got = bottleneck_on(&t, &x, [&dw, &db, &uw, &ub], epi, avx512)?;
                    let diff = (&want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(
                        diff < 1e-4,
                        "bottleneck r {r} d {d} {epi:?} avx512 {avx512}: {diff}"
                    );
                }
            }
        }

        // Mean pooling over each row's real tokens, as the candle ops with a mask.
        let h = Tensor::randn(0f32, 1.0, (3, 5, 8), &dev)?;
        let lengths = [5, 2, 1];
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..5).map(move |i| if i < l { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (3, 5), &dev)?;
        let want = crate::pooling::pool(&h, &mask, crate::Pooling::Mean)?.to_vec2::<f32>()?;
        let got = mean_pool(&h, &lengths)?;
        for (w, g) in want.iter().zip(&got) {
            for (a, b) in w.iter().zip(g) {
                assert!((a - b).abs() < 1e-5, "mean pool {a} vs {b}");
            }
        }

        let y = Tensor::randn(0f32, 1.0, (3, 5, 8), &dev)?;
        let g = Tensor::randn(1f32, 0.1, 8, &dev)?;
        let bt = Tensor::randn(0f32, 0.1, 8, &dev)?;
        let want = candle_nn::ops::layer_norm_slow(&(&x + &y)?, &g, &bt, 1e-12)?;
        let got = add_layer_norm(&x, &y, &g, &bt, 1e-12)?;
        let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "add+layernorm differs by {diff}");
        Ok(())
    }
}

/// `x Wᵀ` for a frozen `W` as a differentiable op whose backward yields the input's
/// gradient only. candle's own matmul also computes the gradient of the (constant)
/// weight, which doubles the cost of training adapters on a frozen model.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return x.broadcast_matmul(&w.t()?);
    }
    x.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })
}

struct FrozenLinear {
    /// `[o, k]`.
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let dims = l.shape().dims().to_vec();
        let k = *dims.last().expect("rank >= 1");
        let n = l.shape().elem_count() / k.max(1);
        let (o, wk) = self.w.dims2()?;
        if wk != k {
            candle_core::bail!("linear: input has {k} features, weight expects {wk}");
        }
        if !l.is_contiguous() {
            candle_core::bail!("frozen linear: input must be contiguous");
        }
        let xs = &s.as_slice::<f32>()?[l.start_offset()..l.start_offset() + n * k];
        let mut out = vec![0f32; n * o];
        with_slice(&self.w, |ws| {
            // SAFETY: as in `fused_linear`: dst [n, o], lhs [n, k], rhs = Wᵀ read from W [o, k].
            unsafe {
                gemm(
                    n,
                    o,
                    k,
                    out.as_mut_ptr(),
                    1,
                    o as isize,
                    false,
                    xs.as_ptr(),
                    1,
                    k as isize,
                    ws.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    threads(),
                )
            }
        })?;
        let mut shape = dims;
        *shape.last_mut().expect("rank >= 1") = o;
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let o = self.w.dim(0)?;
        let g = grad.reshape(((), o))?.matmul(&self.w)?;
        Ok(Some(g.reshape(arg.dims())?))
    }
}

/// Differentiable fused ops for training: one pass over memory each way instead of
/// candle's chains of element-wise temporaries, on the rayon pool.
pub mod train {
    use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
    use rayon::prelude::*;

    use super::simd;

    fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
        if !l.is_contiguous() {
            candle_core::bail!("fused training op: input must be contiguous");
        }
        let o = l.start_offset();
        Ok(&s.as_slice::<f32>()?[o..o + l.shape().elem_count()])
    }

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.contiguous()?.flatten_all()?.to_vec1::<f32>()
    }

    /// Exact (erf) GELU.
    pub fn gelu(x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
            return x.gelu_erf();
        }
        x.contiguous()?.apply_op1(Gelu)
    }

    struct Gelu;

    impl CustomOp1 for Gelu {
        fn name(&self) -> &'static str {
            "train-gelu"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = slice(s, l)?;
            let mut out = x.to_vec();
            out.par_chunks_mut(4096).for_each(simd::gelu);
            Ok((CpuStorage::F32(out), l.shape().clone()))
        }

        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let x = values(arg)?;
            let mut g = values(grad)?;
            const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
            g.par_chunks_mut(4096)
                .zip(x.par_chunks(4096))
                .for_each(|(g, x)| {
                    for (g, &x) in g.iter_mut().zip(x) {
                        let cdf = 0.5 * (1.0 + simd::erf(x * std::f32::consts::FRAC_1_SQRT_2));
                        let pdf = FRAC_1_SQRT_2PI * simd::exp(-0.5 * x * x);
                        *g *= cdf + x * pdf;
                    }
                });
            Ok(Some(Tensor::from_vec(g, arg.dims(), arg.device())?))
        }
    }

    /// `softmax(scale · scores)` over the last dim of `[b, h, t, t]` scores, where
    /// row-batch `i` attends to its first `lengths[i]` keys only (padding gets 0).
    pub fn masked_softmax(scores: &Tensor, lengths: &[usize], scale: f32) -> Result<Tensor> {
        scores.contiguous()?.apply_op1(MaskedSoftmax {
            lengths: lengths.to_vec(),
            scale,
        })
    }

    struct MaskedSoftmax {
        lengths: Vec<usize>,
        scale: f32,
    }

    impl CustomOp1 for MaskedSoftmax {
        fn name(&self) -> &'static str {
            "train-masked-softmax"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = slice(s, l)?;
            let dims = l.shape().dims();
            let (b, t) = (dims[0], dims[dims.len() - 1]);
            let per_batch = x.len() / b.max(1);
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(t)
                .zip(x.par_chunks(t))
                .enumerate()
                .for_each(|(row, (o, x))| {
                    let len = self.lengths[(row * t) / per_batch].min(t).max(1);
                    let m = x[..len].iter().fold(f32::MIN, |m, &v| m.max(v)) * self.scale;
                    let mut sum = 0.0;
                    for (o, &v) in o[..len].iter_mut().zip(&x[..len]) {
                        *o = simd::exp(v * self.scale - m);
                        sum += *o;
                    }
                    let inv = 1.0 / sum;
                    o[..len].iter_mut().for_each(|v| *v *= inv);
                });
            Ok((CpuStorage::F32(out), l.shape().clone()))
        }

        fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let p = values(res)?;
            let mut g = values(grad)?;
            let t = arg.dim(candle_core::D::Minus1)?;
            let scale = self.scale;
            g.par_chunks_mut(t).zip(p.par_chunks(t)).for_each(|(g, p)| {
                let dot: f32 = g.iter().zip(p).map(|(a, b)| a * b).sum();
                for (g, &p) in g.iter_mut().zip(p) {
                    *g = scale * p * (*g - dot);
                }
            });
            Ok(Some(Tensor::from_vec(g, arg.dims(), arg.device())?))
        }
    }

    /// LayerNorm over the last dim with gradients for the input, weight and bias.
    pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
    }

    struct LayerNorm {
        eps: f32,
    }

    /// Mean and 1/σ of a row.
    fn moments(x: &[f32], eps: f32) -> (f32, f32) {
        let d = x.len() as f32;
        let mean = x.iter().sum::<f32>() / d;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
        (mean, 1.0 / (var + eps).sqrt())
    }

    impl CustomOp3 for LayerNorm {
        fn name(&self) -> &'static str {
            "train-layer-norm"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let (x, w, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
            let d = w.len();
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .for_each(|(o, x)| {
                    let (mean, rstd) = moments(x, self.eps);
                    for i in 0..d {
                        o[i] = (x[i] - mean) * rstd * w[i] + b[i];
                    }
                });
            Ok((CpuStorage::F32(out), l1.shape().clone()))
        }

        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let xs = values(x)?;
            let ws = values(w)?;
            let gs = values(grad)?;
            let d = ws.len();
            let mut dx = vec![0f32; xs.len()];
            // Fixed blocks of rows, summed in order: the weight gradients do not depend
            // on how rayon splits the work, so runs are reproducible.
            const BLOCK: usize = 64;
            let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(d * BLOCK)
                .zip(xs.par_chunks(d * BLOCK).zip(gs.par_chunks(d * BLOCK)))
                .map(|(dxb, (xb, gb))| {
                    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                    for (dx, (x, g)) in dxb.chunks_mut(d).zip(xb.chunks(d).zip(gb.chunks(d))) {
                        let (mean, rstd) = moments(x, self.eps);
                        let (mut m1, mut m2) = (0f32, 0f32);
                        for i in 0..d {
                            let xh = (x[i] - mean) * rstd;
                            let dxh = g[i] * ws[i];
                            m1 += dxh;
                            m2 += dxh * xh;
                            dw[i] += g[i] * xh;
                            db[i] += g[i];
                        }
                        let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                        for i in 0..d {
                            let xh = (x[i] - mean) * rstd;
                            dx[i] = rstd * (g[i] * ws[i] - m1 - xh * m2);
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
            let dev = x.device();
            // A frozen weight (no variable behind it) gets no gradient.
            let tracked = |t: &Tensor| t.is_variable() || t.track_op();
            let dw = tracked(w)
                .then(|| Tensor::from_vec(dw, w.dims(), dev))
                .transpose()?;
            let db = tracked(b)
                .then(|| Tensor::from_vec(db, w.dims(), dev))
                .transpose()?;
            Ok((Some(Tensor::from_vec(dx, x.dims(), dev)?), dw, db))
        }
    }
}
