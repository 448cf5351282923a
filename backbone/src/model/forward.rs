//! The forward pass: the one place that chooses between the CPU kernels and candle's
//! device ops ([`Path`]), the padded and the token-packed layouts.

use candle_core::{DType, Tensor};

use super::calibration::LayerRanges;
use super::layer::Fwd;
use super::{BatchInputs, Bert, Mode, PackedLayer};
use crate::error::{Error, Result};
use crate::hooks::{apply_per_group, check_groups, rows, Group};
use crate::ops;

/// Which code runs a forward pass. Chosen once per pass, in [`Bert::path`], and
/// nowhere else: the layer code asks this value, never the device or the type.
#[derive(Clone, Copy)]
pub(super) enum Path<'a> {
    /// Serving on the CPU in f32 or int8: the fused kernels of [`crate::ops`] over
    /// token-packed rows, the frozen linears through their packed weights (empty
    /// when the CPU lacks AVX-512: the portable products then run).
    Kernels(&'a [PackedLayer]),
    /// Training on the CPU in f32: candle's ops, with the differentiable fused ops
    /// of [`crate::ops::train`] where they apply.
    CpuTrain,
    /// Any other device or type (a GPU; f16 and bf16): candle's ops alone.
    Device,
}

impl Path<'_> {
    /// Whether the CPU's own f32 products and fused ops may run.
    pub(super) fn cpu_f32(self) -> bool {
        !matches!(self, Path::Device)
    }
}

impl Bert {
    /// The code that runs a forward pass in `mode` on this model.
    pub(super) fn path(&self, mode: Mode) -> Path<'_> {
        if !self.cpu_f32() {
            Path::Device
        } else if mode == Mode::Inference {
            Path::Kernels(&self.packed)
        } else {
            Path::CpuTrain
        }
    }

    /// Runs the encoder over a padded batch; returns token vectors `[batch, tokens, d]`.
    pub fn forward(&self, inp: &BatchInputs, groups: &[Group<'_>], mode: Mode) -> Result<Tensor> {
        self.forward_with(inp, groups, mode, None)
    }

    /// [`Bert::forward`], recording the input range of every linear when asked.
    pub(super) fn forward_with(
        &self,
        inp: &BatchInputs,
        groups: &[Group<'_>],
        mode: Mode,
        ranges: Option<&std::sync::Mutex<Vec<LayerRanges>>>,
    ) -> Result<Tensor> {
        let (b, t) = inp.input_ids.dims2()?;
        check_groups(groups, b).map_err(Error::Input)?;
        if t > self.config.max_position_embeddings {
            return Err(Error::Input(format!(
                "{t} tokens exceed the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let path = self.path(mode);
        if matches!(path, Path::Kernels(_)) && inp.lengths.iter().any(|&l| l > 0) {
            return self.forward_packed(inp, groups, ranges);
        }
        let f = Fwd {
            m: self,
            groups,
            mode,
            path,
            lengths: &inp.lengths,
            starts: None,
            ranges,
        };
        let d = self.config.hidden_size;
        let ids = inp.input_ids.flatten_all()?;
        let types = inp.token_type_ids.flatten_all()?;
        let words = self.word.index_select(&ids, 0)?.reshape((b, t, d))?;
        let typ = self
            .token_type
            .index_select(&types, 0)?
            .reshape((b, t, d))?;
        let pos = self.position.narrow(0, 0, t)?;
        let e = words.add(&typ)?.broadcast_add(&pos)?;
        let e = f.norm(&e, &self.emb_ln)?;

        // Additive attention mask [b, 1, 1, t]: 0 for tokens, a large negative for padding.
        // f16 tops out at 65,504: its padding gets -3e4, far below any score.
        let big = if self.dtype == DType::F16 { 3e4 } else { 1e9 };
        let mask = ((inp.attention_mask.to_dtype(DType::F32)? - 1.0)? * big)?
            .to_dtype(self.dtype)?
            .reshape((b, 1, 1, t))?;
        let mut h = e.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            h = match path {
                Path::Kernels(packed) => f.layer_fast(l, layer, packed.get(l), &h)?,
                Path::CpuTrain | Path::Device => f.layer(l, layer, &h, &mask)?,
            };
        }
        apply_per_group(&h, groups, |hk, r, t| hk.encoder(&rows(&e, r)?, t)).map_err(Error::from)
    }

    /// The CPU inference forward over packed tokens: the real tokens of every row laid
    /// end to end as `[n, 1, d]`, so no padding position costs a matmul row or an
    /// attention score. Groups become token ranges (every hook is row-wise), attention
    /// runs per sequence, and the result is laid back out as `[b, t, d]` with zeros
    /// at padded positions, as the padded forward gives. Only on [`Path::Kernels`].
    fn forward_packed(
        &self,
        inp: &BatchInputs,
        groups: &[Group<'_>],
        ranges: Option<&std::sync::Mutex<Vec<LayerRanges>>>,
    ) -> Result<Tensor> {
        let (b, t) = inp.input_ids.dims2()?;
        let d = self.config.hidden_size;
        let lengths: Vec<usize> = inp.lengths.iter().map(|&l| l.min(t)).collect();
        let mut starts = Vec::with_capacity(b + 1);
        let mut n = 0;
        for &len in &lengths {
            starts.push(n);
            n += len;
        }
        starts.push(n);
        let all_ids = inp.input_ids.flatten_all()?.to_vec1::<u32>()?;
        let all_types = inp.token_type_ids.flatten_all()?.to_vec1::<u32>()?;
        let (mut ids, mut types, mut pos) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, &len) in lengths.iter().enumerate() {
            ids.extend_from_slice(&all_ids[i * t..i * t + len]);
            types.extend_from_slice(&all_types[i * t..i * t + len]);
            pos.extend(0..len as u32);
        }
        let e = ops::embed_sum(
            [&self.word, &self.token_type, &self.position],
            [&ids, &types, &pos],
        )?
        .reshape((n, 1, d))?;
        let token_groups: Vec<Group<'_>> = groups
            .iter()
            .map(|g| Group {
                rows: starts[g.rows.start]..starts[g.rows.end],
                hooks: g.hooks,
            })
            .collect();
        let f = Fwd {
            m: self,
            groups: &token_groups,
            mode: Mode::Inference,
            path: Path::Kernels(&self.packed),
            lengths: &lengths,
            starts: Some(&starts),
            ranges,
        };
        let e = f.norm(&e, &self.emb_ln)?;
        let mut h = e.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            h = f.layer_fast(l, layer, self.packed.get(l), &h)?;
        }
        let h = apply_per_group(&h, &token_groups, |hk, r, t| hk.encoder(&rows(&e, r)?, t))?;
        let packed = h.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; b * t * d];
        for (i, &len) in lengths.iter().enumerate() {
            out[i * t * d..(i * t + len) * d]
                .copy_from_slice(&packed[starts[i] * d..(starts[i] + len) * d]);
        }
        Ok(Tensor::from_vec(out, (b, t, d), &self.device)?)
    }
}
