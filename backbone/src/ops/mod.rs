//! The CPU kernels of [`crate::cpu`] as tensor operations: inputs checked and read
//! as f32 slices, results wrapped back into CPU tensors. The serving path's ops here
//! record no gradient; [`train`] has the differentiable ones. Whether these or
//! candle's own device ops run is decided by the forward ([`crate::model`]) and, for
//! an adapter's own products, by [`usable`].

pub mod train;

use std::mem::MaybeUninit;

use candle_core::{DType, Device, Result, Storage, Tensor};

pub use crate::cpu::Epilogue;
use crate::cpu::{self, features, matmul::SERIAL_BELOW, BottleneckWeights, PackedWeight};

/// Runs `f` over the f32 contents of a CPU tensor (made contiguous first).
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cpu) => {
            let s = cpu.as_slice::<f32>()?;
            let o = layout.start_offset();
            Ok(f(&s[o..o + t.elem_count()]))
        }
        _ => candle_core::bail!("the CPU kernels run on CPU tensors only"),
    }
}

/// [`with_slice`] of an optional tensor.
fn with_opt_slice<R>(t: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> R) -> Result<R> {
    match t {
        Some(t) => with_slice(t, |s| f(Some(s))),
        None => Ok(f(None)),
    }
}

/// A tensor `[dims]` from `n` values a kernel writes completely into fresh memory.
fn filled(
    n: usize,
    dims: impl Into<candle_core::Shape>,
    write: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<()>,
) -> Result<Tensor> {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    write(&mut out.spare_capacity_mut()[..n])?;
    // SAFETY: every caller's kernel writes all n elements (each documents it).
    unsafe { out.set_len(n) };
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// Whether the CPU kernels can stand in for candle ops on these tensors: all on the
/// CPU, f32, and none a trainable variable (the kernels record no gradient).
pub fn usable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.is_variable())
}

/// An activation over a tensor, on the rayon pool.
pub fn activate(x: &Tensor, epi: Epilogue) -> Result<Tensor> {
    let mut out = with_slice(x, |s| s.to_vec())?;
    cpu::activation::activate_par(&mut out, epi);
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
    if let Some(b) = b {
        if b.elem_count() != o {
            candle_core::bail!("linear: bias has {} elements, expected {o}", b.elem_count());
        }
    }
    let mut shape = dims;
    *shape.last_mut().expect("rank >= 1") = o;
    if let Some(pw) = packed {
        if pw.dims() != (o, k) {
            candle_core::bail!("linear: packed weight is {:?}, not [{o}, {k}]", pw.dims());
        }
        return match target {
            // Written in place, activation included: no zero-fill, no second pass.
            None => filled(n * o, shape, |dst| {
                with_slice(x, |xs| {
                    with_opt_slice(b, |bs| pw.matmul_into(xs, n, dst, bs, scale, epi))
                })?
            }),
            Some(t) => {
                let mut out = with_slice(t, |t| t.to_vec())?;
                with_slice(x, |xs| {
                    with_opt_slice(b, |bs| pw.matmul(xs, n, &mut out, true, bs, scale))
                })??;
                cpu::activation::activate_par(&mut out, epi);
                Tensor::from_vec(out, shape, &Device::Cpu)
            }
        };
    }
    let mut out = match target {
        Some(t) => with_slice(t, |t| t.to_vec())?,
        None => vec![0f32; n * o],
    };
    if let Some(b) = b {
        with_slice(b, |b| {
            let add = |row: &mut [f32]| row.iter_mut().zip(b).for_each(|(r, b)| *r += b);
            if n * o * k < SERIAL_BELOW {
                out.chunks_mut(o).for_each(add);
            } else {
                use rayon::prelude::*;
                out.par_chunks_mut(o).for_each(add);
            }
        })?;
    }
    let accumulate = target.is_some() || b.is_some();
    with_slice(x, |xs| {
        with_slice(w, |ws| {
            cpu::matmul::gemm_nt(&mut out, xs, ws, n, o, k, accumulate, scale, false)
        })
    })??;
    cpu::activation::activate_par(&mut out, epi);
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// A bottleneck's weights (`down` `[r, d]`, `down_b` `[r]`, `up` `[d, r]`, `up_b`
/// `[d]`) laid out for [`bottleneck`]; `None` when the CPU kernels cannot use them
/// (not f32 CPU tensors, or trainable variables).
pub fn prepare_bottleneck(
    down: &Tensor,
    down_b: &Tensor,
    up: &Tensor,
    up_b: &Tensor,
) -> Result<Option<BottleneckWeights>> {
    if !usable(&[down, down_b, up, up_b]) {
        return Ok(None);
    }
    let (r, d) = down.dims2()?;
    if up.dims2()? != (d, r) || down_b.elem_count() != r || up_b.elem_count() != d {
        candle_core::bail!(
            "bottleneck: down {:?} with bias {:?}, up {:?} with bias {:?}",
            down.dims(),
            down_b.dims(),
            up.dims(),
            up_b.dims()
        );
    }
    let w = with_slice(down, |dw| {
        with_slice(down_b, |db| {
            with_slice(up, |uw| {
                with_slice(up_b, |ub| BottleneckWeights::new(dw, db, uw, ub, r, d))
            })
        })
    })????;
    Ok(Some(w))
}

/// A bottleneck added to a target, row by row: `target + b_U + U act(D x + b_D)` for
/// `x` and `target` `[..., d]`, through weights laid out by [`prepare_bottleneck`].
pub fn bottleneck(
    target: &Tensor,
    x: &Tensor,
    w: &BottleneckWeights,
    act: Epilogue,
) -> Result<Tensor> {
    bottleneck_on(target, x, w, act, features::avx512())
}

/// [`bottleneck`] through the AVX-512 rows (`avx512`, checked by the caller) or the
/// portable loop.
fn bottleneck_on(
    target: &Tensor,
    x: &Tensor,
    w: &BottleneckWeights,
    act: Epilogue,
    avx512: bool,
) -> Result<Tensor> {
    let (r, d) = w.dims();
    if x.dims().last() != Some(&d) || target.elem_count() != x.elem_count() {
        candle_core::bail!(
            "bottleneck: x {:?} and target {:?} for weights of width {d} (r {r})",
            x.dims(),
            target.dims()
        );
    }
    filled(x.elem_count(), target.dims(), |dst| {
        with_slice(target, |t| {
            with_slice(x, |xs| {
                cpu::bottleneck::bottleneck_on(dst, t, xs, w, act, avx512)
            })
        })?
    })
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
                cpu::embed::embed_sum(&mut out, [w, t, p], index, d)
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
    with_slice(h, |hs| cpu::embed::mean_pool(hs, t, d, lengths))
}

/// Multi-head self-attention over packed projections `qkv` `[b, t, 3d]` (q | k | v),
/// where row `i` of the batch has `lengths[i]` real tokens followed by padding.
/// Returns the context `[b, t, d]`; rows of padded positions are zero.
pub fn attention(qkv: &Tensor, lengths: &[usize], heads: usize) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    if lengths.len() != b {
        candle_core::bail!("attention: {} lengths for {b} rows", lengths.len());
    }
    let starts: Vec<usize> = (0..b).map(|i| i * t).collect();
    let lengths: Vec<usize> = lengths.iter().map(|&l| l.min(t)).collect();
    let ctx = with_slice(qkv, |src| {
        cpu::attention::attend(src, d3, b * t, &starts, &lengths, heads)
    })?;
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
    let ctx = with_slice(qkv, |src| {
        cpu::attention::attend(src, d3, n, starts, lengths, heads)
    })?;
    Tensor::from_vec(ctx, (n, 1, d3 / 3), &Device::Cpu)
}

/// `LayerNorm(x + y)` over the last dimension.
pub(crate) fn add_layer_norm(
    x: &Tensor,
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let d = *x.dims().last().expect("rank >= 1");
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
    filled(n, x.dims(), |dst| {
        with_slice(x, |xs| {
            with_slice(y, |ys| {
                with_slice(gamma, |g| {
                    with_slice(beta, |bt| {
                        cpu::norm::add_layer_norm(dst, xs, ys, g, bt, eps as f32)
                    })
                })
            })
        })????;
        Ok(())
    })
}

/// `x Wᵀ` for a frozen `W` (f32 CPU tensors) as a differentiable op whose backward
/// yields the input's gradient only. candle's own matmul also computes the gradient
/// of the (constant) weight, which doubles the cost of training adapters on a
/// frozen model.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
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
            cpu::matmul::gemm_nt(&mut out, xs, ws, n, o, k, false, 1.0, true)
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

#[cfg(test)]
mod tests {
    use super::*;

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
                if features::avx512() {
                    paths.push(true);
                }
                for avx512 in paths {
                    let w = prepare_bottleneck(&dw, &db, &uw, &ub)?.expect("f32 CPU tensors");
                    let got = bottleneck_on(&t, &x, &w, epi, avx512)?;
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
