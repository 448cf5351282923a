//! One encoder layer with its hook points, on the CPU kernels (`layer_fast`) or on
//! candle's ops (`layer`), and the helpers both share (per-group parameters and
//! LoRA terms).

use candle_core::{DType, Tensor, D};

use super::calibration::LayerRanges;
use super::forward::Path;
use super::{Bert, Dense, Layer, Mode, Named, Norm, PackedLayer};
use crate::config::HiddenAct;
use crate::cpu::PackedWeight;
use crate::hooks::{apply_per_group, rows, Group, Site, Sub};
use crate::ops;

/// One forward pass: the model, the batch's groups and the mode.
pub(super) struct Fwd<'a> {
    pub(super) m: &'a Bert,
    pub(super) groups: &'a [Group<'a>],
    pub(super) mode: Mode,
    /// Where the ops run (see [`Path`]).
    pub(super) path: Path<'a>,
    /// Real tokens of each sequence.
    pub(super) lengths: &'a [usize],
    /// Token-packed forward: the first row of each sequence (`[n, 1, d]` tensors);
    /// `None` for the padded `[b, t, d]` layout.
    pub(super) starts: Option<&'a [usize]>,
    /// Calibration: input ranges of the linears, recorded on the fast path.
    pub(super) ranges: Option<&'a std::sync::Mutex<Vec<LayerRanges>>>,
}

impl Fwd<'_> {
    /// Whether any group replaces this backbone tensor (BitFit).
    fn overridden(&self, p: &Named) -> bool {
        self.groups
            .iter()
            .any(|g| g.hooks.and_then(|h| h.param(&p.name)).is_some())
    }

    /// A linear with the fused kernel when no group replaces its bias; LoRA terms added per group.
    fn dense_fast(
        &self,
        l: usize,
        site: Site,
        x: &Tensor,
        dn: &Dense,
        packed: Option<&PackedWeight>,
        epi: ops::Epilogue,
    ) -> candle_core::Result<Tensor> {
        if self.overridden(&dn.bias) {
            let y = self.dense(l, site, x, dn)?;
            return match epi {
                ops::Epilogue::None => Ok(y),
                _ => ops::activate(&y, epi),
            };
        }
        if self
            .groups
            .iter()
            .all(|g| g.hooks.is_none_or(|h| !h.has_linear()))
        {
            return ops::linear_packed(x, &dn.weight, packed, &dn.bias.t, epi);
        }
        // A LoRA term must be added before the activation.
        let y = ops::linear_packed(x, &dn.weight, packed, &dn.bias.t, ops::Epilogue::None)?;
        let y = apply_per_group(&y, self.groups, |hk, r, t| {
            hk.linear(l, site, &rows(x, r)?, t)
        })?;
        match epi {
            ops::Epilogue::None => Ok(y),
            _ => ops::activate(&y, epi),
        }
    }

    /// `LN(x + y)`, fused unless a group replaces the LayerNorm's tensors.
    fn add_norm(&self, x: &Tensor, y: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        if self.overridden(&n.weight) || self.overridden(&n.bias) {
            return self.norm(&x.add(y)?, n);
        }
        ops::add_layer_norm(x, y, &n.weight.t, &n.bias.t, self.m.config.layer_norm_eps)
    }

    /// The same layer as [`Fwd::layer`], through the fused kernels.
    pub(super) fn layer_fast(
        &self,
        l: usize,
        ly: &Layer,
        pk: Option<&PackedLayer>,
        h: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.m.config;
        let d = cfg.hidden_size;
        let g = self.groups;
        self.record(l, 0, h)?;
        let qkv_plain = !(self.overridden(&ly.q_bias)
            || self.overridden(&ly.k_bias)
            || self.overridden(&ly.v_bias));
        let mut qkv = if qkv_plain {
            ops::linear_packed(
                h,
                &ly.qkv,
                pk.map(|p| &p.qkv),
                &ly.qkv_bias,
                ops::Epilogue::None,
            )?
        } else {
            let (b, t, _) = h.dims3()?;
            let y = h
                .reshape((b * t, d))?
                .matmul(&ly.qkv.t()?)?
                .reshape((b, t, 3 * d))?;
            let parts = [&ly.q_bias, &ly.k_bias, &ly.v_bias]
                .iter()
                .enumerate()
                .map(|(i, bias)| self.add_param(&y.narrow(2, i * d, d)?, bias))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 2)?
        };
        // LoRA on q, k or v: add each projection's per-group term, then re-pack.
        let sites = [Site::Query, Site::Key, Site::Value];
        let mut parts: Vec<Tensor> = Vec::new();
        let mut any = false;
        for (i, site) in sites.into_iter().enumerate() {
            let y = qkv.narrow(2, i * d, d)?;
            let z = apply_per_group(&y, g, |hk, r, t| hk.linear(l, site, &rows(h, r)?, t))?;
            any |= !same(&y, &z);
            parts.push(z);
        }
        if any {
            qkv = Tensor::cat(&parts, 2)?;
        }
        let ctx = match self.starts {
            Some(starts) => {
                ops::attention_packed(&qkv, starts, self.lengths, cfg.num_attention_heads)?
            }
            None => ops::attention(&qkv, self.lengths, cfg.num_attention_heads)?,
        };
        self.record(l, 1, &ctx)?;
        let a = self.dense_fast(
            l,
            Site::AttnOut,
            &ctx,
            &ly.attn_out,
            pk.map(|p| &p.attn_out),
            ops::Epilogue::None,
        )?;
        let a = apply_per_group(&a, g, |hk, _, t| hk.inner(l, Sub::Attn, t))?;
        let u = self.add_norm(h, &a, &ly.ln1)?;
        let u = apply_per_group(&u, g, |hk, r, t| {
            let hr = rows(h, r)?;
            hk.aside(l, Sub::Attn, &hr, &hr, t)
        })?;
        self.record(l, 2, &u)?;
        let x = match self.m.act {
            HiddenAct::Gelu => self.dense_fast(
                l,
                Site::Inter,
                &u,
                &ly.inter,
                pk.map(|p| &p.inter),
                ops::Epilogue::Gelu,
            )?,
            HiddenAct::GeluTanh => self.dense(l, Site::Inter, &u, &ly.inter)?.gelu()?,
            HiddenAct::Relu => self.dense(l, Site::Inter, &u, &ly.inter)?.relu()?,
        };
        self.record(l, 3, &x)?;
        let fo = self.dense_fast(
            l,
            Site::Out,
            &x,
            &ly.out,
            pk.map(|p| &p.out),
            ops::Epilogue::None,
        )?;
        let fo = apply_per_group(&fo, g, |hk, _, t| hk.inner(l, Sub::Ffn, t))?;
        let out = self.add_norm(&u, &fo, &ly.ln2)?;
        apply_per_group(&out, g, |hk, r, t| {
            hk.aside(l, Sub::Ffn, &rows(h, r)?, &rows(&u, r)?, t)
        })
    }

    /// `x` with each group's replacement (or the backbone's own) vector added on the last dim.
    fn add_param(&self, x: &Tensor, p: &Named) -> candle_core::Result<Tensor> {
        self.with_param(x, p, Tensor::broadcast_add)
    }

    fn mul_param(&self, x: &Tensor, p: &Named) -> candle_core::Result<Tensor> {
        self.with_param(x, p, Tensor::broadcast_mul)
    }

    /// `op(x, p)` with each group's replacement of `p` (or the backbone's own) on its rows.
    fn with_param(
        &self,
        x: &Tensor,
        p: &Named,
        op: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        if !self.overridden(p) {
            return op(x, &p.t);
        }
        let mut pieces = Vec::with_capacity(self.groups.len());
        for g in self.groups {
            let v = g.hooks.and_then(|h| h.param(&p.name)).unwrap_or(&p.t);
            pieces.push(op(&rows(x, &g.rows)?, v)?);
        }
        Tensor::cat(&pieces, 0)
    }

    /// LayerNorm over the last dim, with each group's replacement of its tensors.
    /// In f16 and bf16 it runs in f32 (its tensors are kept in f32) and the result
    /// returns to the model's type: half-precision statistics would cost accuracy.
    pub(super) fn norm(&self, x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        match x.dtype() {
            DType::F32 => self.norm_f32(x, n),
            dt => self.norm_f32(&x.to_dtype(DType::F32)?, n)?.to_dtype(dt),
        }
    }

    fn norm_f32(&self, x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        let eps = self.m.config.layer_norm_eps;
        let overridden = self.groups.iter().any(|g| {
            g.hooks.is_some_and(|h| {
                h.param(&n.weight.name).is_some() || h.param(&n.bias.name).is_some()
            })
        });
        if self.mode == Mode::Inference && !overridden {
            return candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &n.weight.t,
                &n.bias.t,
                eps as f32,
            );
        }
        if !overridden && self.path.cpu_f32() {
            return ops::train::layer_norm(x, &n.weight.t, &n.bias.t, eps as f32);
        }
        let d = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / d)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        self.add_param(&self.mul_param(&xn, &n.weight)?, &n.bias)
    }

    /// `x Wᵀ` over the whole batch (x: `[b, t, in]`), plus each group's LoRA term.
    fn matmul(&self, l: usize, site: Site, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.frozen_or_var(x, w)?;
        apply_per_group(&y, self.groups, |hk, r, t| {
            hk.linear(l, site, &rows(x, r)?, t)
        })
    }

    /// `x Wᵀ` for `x` `[b, t, in]`: without a weight gradient when `W` is frozen.
    fn frozen_or_var(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        if w.is_variable() {
            let (b, t, k) = x.dims3()?;
            let y = x.reshape((b * t, k))?.matmul(&w.t()?)?;
            return y.reshape((b, t, w.dim(0)?));
        }
        if self.path.cpu_f32() {
            return ops::frozen_matmul(x, w);
        }
        x.broadcast_matmul(&w.t()?)
    }

    fn dense(&self, l: usize, site: Site, x: &Tensor, dn: &Dense) -> candle_core::Result<Tensor> {
        let y = self.matmul(l, site, x, &dn.weight)?;
        self.add_param(&y, &dn.bias)
    }

    fn softmax(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.mode {
            Mode::Inference => candle_nn::ops::softmax_last_dim(x),
            Mode::Train => candle_nn::ops::softmax(x, D::Minus1),
        }
    }

    pub(super) fn layer(
        &self,
        l: usize,
        ly: &Layer,
        h: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.m.config;
        let (b, t, d) = h.dims3()?;
        let (nh, hd) = (cfg.num_attention_heads, cfg.head_dim());
        let g = self.groups;

        // Self-attention: one matmul for q, k, v; LoRA terms per projection.
        let qkv = self.frozen_or_var(h, &ly.qkv)?;
        let proj = |i: usize, site: Site, bias: &Named| -> candle_core::Result<Tensor> {
            let y = qkv.narrow(2, i * d, d)?;
            let y = apply_per_group(&y, g, |hk, r, t| hk.linear(l, site, &rows(h, r)?, t))?;
            self.add_param(&y, bias)
        };
        let heads = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(proj(0, Site::Query, &ly.q_bias)?)?;
        let k = heads(proj(1, Site::Key, &ly.k_bias)?)?;
        let v = heads(proj(2, Site::Value, &ly.v_bias)?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let probs = if self.path.cpu_f32() {
            ops::train::masked_softmax(&q.matmul(&k.t()?)?, self.lengths, scale as f32)?
        } else {
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
            self.softmax(&scores)?
        };
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let a = self.dense(l, Site::AttnOut, &ctx, &ly.attn_out)?;
        let a = apply_per_group(&a, g, |hk, _, t| hk.inner(l, Sub::Attn, t))?;
        let u = self.norm(&h.add(&a)?, &ly.ln1)?;
        let u = apply_per_group(&u, g, |hk, r, t| {
            let hr = rows(h, r)?;
            hk.aside(l, Sub::Attn, &hr, &hr, t)
        })?;

        // Feed-forward.
        let x = self.dense(l, Site::Inter, &u, &ly.inter)?;
        let x = match self.m.act {
            HiddenAct::Gelu if self.path.cpu_f32() => ops::train::gelu(&x)?,
            HiddenAct::Gelu => x.gelu_erf()?,
            HiddenAct::GeluTanh => x.gelu()?,
            HiddenAct::Relu => x.relu()?,
        };
        let fo = self.dense(l, Site::Out, &x, &ly.out)?;
        let fo = apply_per_group(&fo, g, |hk, _, t| hk.inner(l, Sub::Ffn, t))?;
        let out = self.norm(&u.add(&fo)?, &ly.ln2)?;
        apply_per_group(&out, g, |hk, r, t| {
            hk.aside(l, Sub::Ffn, &rows(h, r)?, &rows(&u, r)?, t)
        })
    }
}

/// Whether two tensors are the same view of the same storage (no delta was added).
fn same(a: &Tensor, b: &Tensor) -> bool {
    a.id() == b.id()
}
