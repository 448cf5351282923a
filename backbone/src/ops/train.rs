//! Differentiable CPU ops for training (f32 CPU tensors): one pass over memory each
//! way instead of candle's chains of element-wise temporaries, on the rayon pool.
//! The forward chooses them ([`crate::model`]); on other devices or types it runs
//! candle's composite ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu;

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
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "train-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = slice(s, l)?.to_vec();
        cpu::activation::activate_par(&mut out, cpu::Epilogue::Gelu);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = values(arg)?;
        let mut g = values(grad)?;
        cpu::activation::gelu_backward(&mut g, &x);
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
        let out = cpu::attention::masked_softmax(x, b, t, &self.lengths, self.scale);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let p = values(res)?;
        let mut g = values(grad)?;
        let t = arg.dim(candle_core::D::Minus1)?;
        cpu::attention::masked_softmax_backward(&mut g, &p, t, self.scale);
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
        let out = cpu::norm::layer_norm(x, w, b, self.eps);
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
        let (dx, dw, db) =
            cpu::norm::layer_norm_backward(&values(x)?, &values(w)?, &values(grad)?, self.eps);
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
