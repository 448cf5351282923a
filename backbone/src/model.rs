//! The frozen BERT encoder: weights loaded once from safetensors, and a batched
//! forward that calls the [`Hooks`] of each row group at the points `hooks.rs` draws.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::config::{BertConfig, HiddenAct};
use crate::error::{Error, Result};
use crate::hooks::{apply_per_group, check_groups, rows, Group, Site, Sub};
use crate::kernels;
use crate::packed::{PackedWeight, Precision};

/// Whether the forward must be differentiable (training adapters) or fast (serving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused CPU kernels for softmax and LayerNorm (no gradients through them).
    #[default]
    Inference,
    /// Composite, differentiable ops everywhere.
    Train,
}

/// A bias or LayerNorm tensor together with the name adapters use to replace it.
#[derive(Debug, Clone)]
struct Named {
    name: String,
    t: Tensor,
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Named,
    bias: Named,
}

#[derive(Debug, Clone)]
struct Dense {
    /// `[out, in]`, PyTorch layout.
    weight: Tensor,
    bias: Named,
}

#[derive(Debug, Clone)]
struct Layer {
    /// Query, key and value weights stacked into one `[3d, d]` matmul.
    qkv: Tensor,
    /// Their biases stacked the same way, `[3d]`.
    qkv_bias: Tensor,
    q_bias: Named,
    k_bias: Named,
    v_bias: Named,
    attn_out: Dense,
    ln1: Norm,
    inter: Dense,
    out: Dense,
    ln2: Norm,
}

/// A layer's four frozen matrices, packed for the serving path's kernels.
#[derive(Debug)]
struct PackedLayer {
    qkv: PackedWeight,
    attn_out: PackedWeight,
    inter: PackedWeight,
    out: PackedWeight,
}

/// Inputs of one padded batch.
#[derive(Debug, Clone)]
pub struct BatchInputs {
    /// `[batch, tokens]` u32.
    pub input_ids: Tensor,
    /// `[batch, tokens]` u32.
    pub token_type_ids: Tensor,
    /// `[batch, tokens]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// Real tokens of each row; padding follows them (right padding).
    pub lengths: Vec<usize>,
}

/// The frozen encoder. It has no `&mut` methods: once loaded it is shared read-only.
#[derive(Debug)]
pub struct Bert {
    config: BertConfig,
    act: HiddenAct,
    device: Device,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: Norm,
    layers: Vec<Layer>,
    /// Shapes of every tensor of the checkpoint (names without `bert.`).
    shapes: BTreeMap<String, Vec<usize>>,
    /// One entry per layer when the CPU runs the packed kernels; empty otherwise
    /// (the `gemm` crate then does f32) and for trainable copies.
    packed: Vec<PackedLayer>,
}

struct Loader<'a> {
    st: &'a candle_core::safetensors::MmapedSafetensors,
    prefix: &'static str,
    device: &'a Device,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl Loader<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{}", self.prefix, name);
        let t = self
            .st
            .load(&full, self.device)
            .map_err(|e| Error::Weights {
                name: full.clone(),
                message: format!("cannot load: {e}"),
            })?;
        if t.dims() != shape {
            return Err(Error::Weights {
                name: full,
                message: format!("expected shape {shape:?}, found {:?}", t.dims()),
            });
        }
        let t = t.to_dtype(DType::F32)?;
        self.shapes.insert(name.to_owned(), shape.to_vec());
        Ok(t)
    }

    fn named(&mut self, name: String, shape: &[usize]) -> Result<Named> {
        let t = self.get(&name, shape)?;
        Ok(Named { name, t })
    }

    fn norm(&mut self, prefix: &str, d: usize) -> Result<Norm> {
        Ok(Norm {
            weight: self.named(format!("{prefix}.weight"), &[d])?,
            bias: self.named(format!("{prefix}.bias"), &[d])?,
        })
    }

    fn dense(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Dense> {
        Ok(Dense {
            weight: self.get(&format!("{prefix}.weight"), &[out, inp])?,
            bias: self.named(format!("{prefix}.bias"), &[out])?,
        })
    }
}

impl Bert {
    /// Loads the weights (memory-mapped safetensors, with or without a `bert.` prefix)
    /// and packs the layer matrices for the f32 kernels where the CPU has AVX-512 (the
    /// `gemm` crate runs them otherwise).
    pub fn load(config: BertConfig, weights: &Path, device: &Device) -> Result<Self> {
        // SAFETY: the file is mapped read-only and copied into tensors before return;
        // the model folder is not expected to change while the server starts.
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(weights) }.map_err(|e| {
                Error::Weights {
                    name: weights.display().to_string(),
                    message: format!("not a readable safetensors file: {e}"),
                }
            })?;
        let has = |n: &str| st.get(n).is_ok();
        let prefix = if has("embeddings.word_embeddings.weight") {
            ""
        } else if has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            return Err(Error::Weights {
                name: "embeddings.word_embeddings.weight".into(),
                message: "missing (looked for it with and without the `bert.` prefix)".into(),
            });
        };
        let act = config.activation().map_err(|message| Error::Weights {
            name: "config".into(),
            message,
        })?;
        let (d, i) = (config.hidden_size, config.intermediate_size);
        let mut ld = Loader {
            st: &st,
            prefix,
            device,
            shapes: BTreeMap::new(),
        };
        let word = ld.get("embeddings.word_embeddings.weight", &[config.vocab_size, d])?;
        let position = ld.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, d],
        )?;
        let token_type = ld.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, d],
        )?;
        let emb_ln = ld.norm("embeddings.LayerNorm", d)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = |s: Site| Site::tensor_prefix(s, l);
            let q = ld.dense(&p(Site::Query), d, d)?;
            let k = ld.dense(&p(Site::Key), d, d)?;
            let v = ld.dense(&p(Site::Value), d, d)?;
            layers.push(Layer {
                qkv: Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?,
                qkv_bias: Tensor::cat(&[&q.bias.t, &k.bias.t, &v.bias.t], 0)?,
                q_bias: q.bias,
                k_bias: k.bias,
                v_bias: v.bias,
                attn_out: ld.dense(&p(Site::AttnOut), d, d)?,
                ln1: ld.norm(&format!("encoder.layer.{l}.attention.output.LayerNorm"), d)?,
                inter: ld.dense(&p(Site::Inter), i, d)?,
                out: ld.dense(&p(Site::Out), d, i)?,
                ln2: ld.norm(&format!("encoder.layer.{l}.output.LayerNorm"), d)?,
            });
        }
        let shapes = ld.shapes;
        let mut bert = Bert {
            config,
            act,
            device: device.clone(),
            word,
            position,
            token_type,
            emb_ln,
            layers,
            shapes,
            packed: Vec::new(),
        };
        bert.packed = bert.pack(Precision::F32, None)?;
        Ok(bert)
    }

    /// The same model with its linears in int8: the input range of every linear is
    /// measured on `calibration` (an f32 forward pass) and the weights are packed with
    /// per-channel smoothing for those ranges (see [`crate::packed`]).
    pub fn into_int8(mut self, calibration: &BatchInputs, precision: Precision) -> Result<Bert> {
        assert!(precision.is_int8(), "into_int8 with {precision}");
        if !(self.device.is_cpu() && precision.supported()) {
            return Err(Error::Unsupported(format!(
                "int8 needs a CPU with AVX-512 VNNI (this {} lacks it); use f32",
                if self.device.is_cpu() {
                    "CPU"
                } else {
                    "device"
                }
            )));
        }
        let ranges = std::sync::Mutex::new(Vec::new());
        let groups = [Group {
            rows: 0..calibration.lengths.len(),
            hooks: None,
        }];
        self.forward_with(calibration, &groups, Mode::Inference, Some(&ranges))?;
        let ranges = ranges.into_inner().expect("calibration lock");
        self.packed = self.pack(precision, Some(&ranges))?;
        Ok(self)
    }

    /// Packs every layer's frozen matrices; empty when the CPU lacks the kernels.
    fn pack(
        &self,
        precision: Precision,
        ranges: Option<&[LayerRanges]>,
    ) -> Result<Vec<PackedLayer>> {
        if !self.device.is_cpu() || !precision.supported() {
            return Ok(Vec::new());
        }
        let pack = |t: &Tensor, r: Option<&Vec<f32>>| -> Result<PackedWeight> {
            let (o, k) = t.dims2()?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            let r = r.filter(|r| r.len() == k).map(|r| &r[..]);
            Ok(PackedWeight::with_ranges(&v, o, k, precision, r).expect("support checked above"))
        };
        self.layers
            .iter()
            .enumerate()
            .map(|(l, ly)| {
                let r = |i: usize| ranges.and_then(|r| r.get(l)).map(|r| &r[i]);
                Ok(PackedLayer {
                    qkv: pack(&ly.qkv, r(0))?,
                    attn_out: pack(&ly.attn_out.weight, r(1))?,
                    inter: pack(&ly.inter.weight, r(2))?,
                    out: pack(&ly.out.weight, r(3))?,
                })
            })
            .collect()
    }

    /// The arithmetic of the frozen linears on the inference path.
    pub fn precision(&self) -> Precision {
        self.packed
            .first()
            .map_or(Precision::F32, |p| p.qkv.precision())
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// A copy whose every weight is a fresh trainable variable (full fine-tuning), with
    /// the variables by name. Each layer's query/key/value weights train as one stacked
    /// `[3d, d]` variable named `encoder.layer.{l}.attention.self.qkv.weight`;
    /// [`Bert::named_tensors`] splits it back.
    pub fn trainable(&self) -> Result<(Bert, Vec<(String, candle_core::Var)>)> {
        let mut vars = Vec::new();
        let mut var = |name: String, t: &Tensor| -> Result<Tensor> {
            let v = candle_core::Var::from_tensor(t)?;
            let out = v.as_tensor().clone();
            vars.push((name, v));
            Ok(out)
        };
        let mut named = |n: &Named| -> Result<Named> {
            Ok(Named {
                name: n.name.clone(),
                t: var(n.name.clone(), &n.t)?,
            })
        };
        let norm = |n: &Norm, named: &mut dyn FnMut(&Named) -> Result<Named>| -> Result<Norm> {
            Ok(Norm {
                weight: named(&n.weight)?,
                bias: named(&n.bias)?,
            })
        };
        let emb_ln = norm(&self.emb_ln, &mut named)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut weights = Vec::new();
        for (l, ly) in self.layers.iter().enumerate() {
            let mut biases = Vec::new();
            for n in [&ly.q_bias, &ly.k_bias, &ly.v_bias] {
                biases.push(named(n)?);
            }
            let dense = |dn: &Dense,
                         named: &mut dyn FnMut(&Named) -> Result<Named>|
             -> Result<(Dense, Tensor)> {
                let bias = named(&dn.bias)?;
                Ok((
                    Dense {
                        weight: dn.weight.clone(),
                        bias,
                    },
                    dn.weight.clone(),
                ))
            };
            let (attn_out, w1) = dense(&ly.attn_out, &mut named)?;
            let ln1 = norm(&ly.ln1, &mut named)?;
            let (inter, w2) = dense(&ly.inter, &mut named)?;
            let (out, w3) = dense(&ly.out, &mut named)?;
            let ln2 = norm(&ly.ln2, &mut named)?;
            let v_bias = biases.pop().expect("3 biases");
            let k_bias = biases.pop().expect("3 biases");
            let q_bias = biases.pop().expect("3 biases");
            weights.push((l, [w1, w2, w3]));
            layers.push(Layer {
                qkv: ly.qkv.clone(),
                qkv_bias: ly.qkv_bias.clone(),
                q_bias,
                k_bias,
                v_bias,
                attn_out,
                ln1,
                inter,
                out,
                ln2,
            });
        }
        // The matrices, now that the closures borrowing `var` are gone.
        for (l, [w1, w2, w3]) in weights {
            let p = |s: Site| format!("{}.weight", Site::tensor_prefix(s, l));
            let ly = &mut layers[l];
            ly.qkv = var(
                format!("encoder.layer.{l}.attention.self.qkv.weight"),
                &self.layers[l].qkv,
            )?;
            ly.attn_out.weight = var(p(Site::AttnOut), &w1)?;
            ly.inter.weight = var(p(Site::Inter), &w2)?;
            ly.out.weight = var(p(Site::Out), &w3)?;
        }
        let word = var("embeddings.word_embeddings.weight".into(), &self.word)?;
        let position = var(
            "embeddings.position_embeddings.weight".into(),
            &self.position,
        )?;
        let token_type = var(
            "embeddings.token_type_embeddings.weight".into(),
            &self.token_type,
        )?;
        let bert = Bert {
            config: self.config.clone(),
            act: self.act,
            device: self.device.clone(),
            word,
            position,
            token_type,
            emb_ln,
            layers,
            shapes: self.shapes.clone(),
            // The weights are variables now: nothing packed may go stale.
            packed: Vec::new(),
        };
        Ok((bert, vars))
    }

    /// A frozen copy of the current values (e.g. of a [`Bert::trainable`] model being
    /// trained), fit for the fast inference path.
    pub fn frozen_copy(&self) -> Result<Bert> {
        let c = |t: &Tensor| -> Result<Tensor> { Ok(t.detach().copy()?) };
        let n = |x: &Named| -> Result<Named> {
            Ok(Named {
                name: x.name.clone(),
                t: c(&x.t)?,
            })
        };
        let norm = |x: &Norm| -> Result<Norm> {
            Ok(Norm {
                weight: n(&x.weight)?,
                bias: n(&x.bias)?,
            })
        };
        let dense = |x: &Dense| -> Result<Dense> {
            Ok(Dense {
                weight: c(&x.weight)?,
                bias: n(&x.bias)?,
            })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for ly in &self.layers {
            let (q_bias, k_bias, v_bias) = (n(&ly.q_bias)?, n(&ly.k_bias)?, n(&ly.v_bias)?);
            layers.push(Layer {
                qkv: c(&ly.qkv)?,
                qkv_bias: Tensor::cat(&[&q_bias.t, &k_bias.t, &v_bias.t], 0)?,
                q_bias,
                k_bias,
                v_bias,
                attn_out: dense(&ly.attn_out)?,
                ln1: norm(&ly.ln1)?,
                inter: dense(&ly.inter)?,
                out: dense(&ly.out)?,
                ln2: norm(&ly.ln2)?,
            });
        }
        let mut bert = Bert {
            config: self.config.clone(),
            act: self.act,
            device: self.device.clone(),
            word: c(&self.word)?,
            position: c(&self.position)?,
            token_type: c(&self.token_type)?,
            emb_ln: norm(&self.emb_ln)?,
            layers,
            shapes: self.shapes.clone(),
            packed: Vec::new(),
        };
        bert.packed = bert.pack(Precision::F32, None)?;
        Ok(bert)
    }

    /// Every weight under its checkpoint name (no `bert.` prefix), query/key/value split
    /// apart again: what a model folder's `model.safetensors` holds.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let d = self.config.hidden_size;
        let mut out = vec![
            (
                "embeddings.word_embeddings.weight".to_owned(),
                self.word.clone(),
            ),
            (
                "embeddings.position_embeddings.weight".to_owned(),
                self.position.clone(),
            ),
            (
                "embeddings.token_type_embeddings.weight".to_owned(),
                self.token_type.clone(),
            ),
        ];
        let mut push = |n: &Named| out.push((n.name.clone(), n.t.clone()));
        push(&self.emb_ln.weight);
        push(&self.emb_ln.bias);
        for (l, ly) in self.layers.iter().enumerate() {
            let w = |s: Site| format!("{}.weight", Site::tensor_prefix(s, l));
            for (i, s) in [Site::Query, Site::Key, Site::Value]
                .into_iter()
                .enumerate()
            {
                out.push((w(s), ly.qkv.narrow(0, i * d, d)?));
            }
            out.push((w(Site::AttnOut), ly.attn_out.weight.clone()));
            out.push((w(Site::Inter), ly.inter.weight.clone()));
            out.push((w(Site::Out), ly.out.weight.clone()));
            for n in [
                &ly.q_bias,
                &ly.k_bias,
                &ly.v_bias,
                &ly.attn_out.bias,
                &ly.ln1.weight,
                &ly.ln1.bias,
                &ly.inter.bias,
                &ly.out.bias,
                &ly.ln2.weight,
                &ly.ln2.bias,
            ] {
                out.push((n.name.clone(), n.t.clone()));
            }
        }
        Ok(out)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Shapes of the encoder's tensors by name (without `bert.`); the pooler is not used.
    pub fn tensor_shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// Parameters of the encoder (embeddings + layers, as loaded).
    pub fn parameter_count(&self) -> usize {
        self.shapes
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// A bias or LayerNorm tensor by name (without `bert.`), e.g. for BitFit's initial values.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        let mut named: Vec<&Named> = vec![&self.emb_ln.weight, &self.emb_ln.bias];
        for l in &self.layers {
            named.extend([
                &l.q_bias,
                &l.k_bias,
                &l.v_bias,
                &l.attn_out.bias,
                &l.ln1.weight,
                &l.ln1.bias,
                &l.inter.bias,
                &l.out.bias,
                &l.ln2.weight,
                &l.ln2.bias,
            ]);
        }
        named.into_iter().find(|n| n.name == name).map(|n| &n.t)
    }

    /// `[in, out]` of a layer's linear.
    pub fn linear_dims(&self, site: Site) -> (usize, usize) {
        let (d, i) = (self.config.hidden_size, self.config.intermediate_size);
        match site {
            Site::Inter => (d, i),
            Site::Out => (i, d),
            _ => (d, d),
        }
    }

    /// Runs the encoder over a padded batch; returns token vectors `[batch, tokens, d]`.
    pub fn forward(&self, inp: &BatchInputs, groups: &[Group<'_>], mode: Mode) -> Result<Tensor> {
        self.forward_with(inp, groups, mode, None)
    }

    /// [`Bert::forward`], recording the input range of every linear when asked.
    fn forward_with(
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
        let fast = mode == Mode::Inference && self.device.is_cpu();
        if fast && inp.lengths.iter().any(|&l| l > 0) {
            return self.forward_packed(inp, groups, ranges);
        }
        let f = Fwd {
            m: self,
            groups,
            mode,
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
        let mask =
            ((inp.attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let mut h = e.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            h = if fast {
                f.layer_fast(l, layer, self.packed.get(l), &h)?
            } else {
                f.layer(l, layer, &h, &mask)?
            };
        }
        apply_per_group(&h, groups, |hk, r, t| hk.encoder(&rows(&e, r)?, t)).map_err(Error::from)
    }

    /// The CPU inference forward over packed tokens: the real tokens of every row laid
    /// end to end as `[n, 1, d]`, so no padding position costs a matmul row or an
    /// attention score. Groups become token ranges (every hook is row-wise), attention
    /// runs per sequence, and the result is laid back out as `[b, t, d]` with zeros
    /// at padded positions, as the padded forward gives.
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
        let e = kernels::embed_sum(
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

/// max |x_j| per input channel of a layer's qkv, attention-output, intermediate and
/// output linears.
type LayerRanges = [Vec<f32>; 4];

/// One forward pass: the model, the batch's groups and the mode.
struct Fwd<'a> {
    m: &'a Bert,
    groups: &'a [Group<'a>],
    mode: Mode,
    /// Real tokens of each sequence.
    lengths: &'a [usize],
    /// Token-packed forward: the first row of each sequence (`[n, 1, d]` tensors);
    /// `None` for the padded `[b, t, d]` layout.
    starts: Option<&'a [usize]>,
    /// Calibration: input ranges of the linears, recorded on the fast path.
    ranges: Option<&'a std::sync::Mutex<Vec<LayerRanges>>>,
}

impl Fwd<'_> {
    /// Records max |x_j| over the real (unpadded) tokens of `x` as input `slot` of
    /// layer `l`'s linears.
    fn record(&self, l: usize, slot: usize, x: &Tensor) -> candle_core::Result<()> {
        let Some(ranges) = self.ranges else {
            return Ok(());
        };
        let (_, t, k) = x.dims3()?;
        let first = |i: usize| self.starts.map_or(i * t, |s| s[i]);
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let mut all = ranges.lock().expect("calibration lock");
        while all.len() <= l {
            all.push(Default::default());
        }
        let r = &mut all[l][slot];
        r.resize(k, 0.0);
        for (i, len) in self.lengths.iter().enumerate() {
            for row in v[first(i) * k..].chunks(k).take(*len) {
                for (m, x) in r.iter_mut().zip(row) {
                    *m = m.max(x.abs());
                }
            }
        }
        Ok(())
    }

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
        epi: kernels::Epilogue,
    ) -> candle_core::Result<Tensor> {
        if self.overridden(&dn.bias) {
            let y = self.dense(l, site, x, dn)?;
            return match epi {
                kernels::Epilogue::None => Ok(y),
                _ => kernels::activate(&y, epi),
            };
        }
        if self
            .groups
            .iter()
            .all(|g| g.hooks.is_none_or(|h| !h.has_linear()))
        {
            return kernels::linear_packed(x, &dn.weight, packed, &dn.bias.t, epi);
        }
        // A LoRA term must be added before the activation.
        let y = kernels::linear_packed(x, &dn.weight, packed, &dn.bias.t, kernels::Epilogue::None)?;
        let y = apply_per_group(&y, self.groups, |hk, r, t| {
            hk.linear(l, site, &rows(x, r)?, t)
        })?;
        match epi {
            kernels::Epilogue::None => Ok(y),
            _ => kernels::activate(&y, epi),
        }
    }

    /// `LN(x + y)`, fused unless a group replaces the LayerNorm's tensors.
    fn add_norm(&self, x: &Tensor, y: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        if self.overridden(&n.weight) || self.overridden(&n.bias) {
            return self.norm(&x.add(y)?, n);
        }
        kernels::add_layer_norm(x, y, &n.weight.t, &n.bias.t, self.m.config.layer_norm_eps)
    }

    /// The same layer as [`Fwd::layer`], through the fused kernels.
    fn layer_fast(
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
            kernels::linear_packed(
                h,
                &ly.qkv,
                pk.map(|p| &p.qkv),
                &ly.qkv_bias,
                kernels::Epilogue::None,
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
                kernels::attention_packed(&qkv, starts, self.lengths, cfg.num_attention_heads)?
            }
            None => kernels::attention(&qkv, self.lengths, cfg.num_attention_heads)?,
        };
        self.record(l, 1, &ctx)?;
        let a = self.dense_fast(
            l,
            Site::AttnOut,
            &ctx,
            &ly.attn_out,
            pk.map(|p| &p.attn_out),
            kernels::Epilogue::None,
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
                kernels::Epilogue::Gelu,
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
            kernels::Epilogue::None,
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

    fn norm(&self, x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
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
        if !overridden && x.device().is_cpu() && x.dtype() == DType::F32 {
            return kernels::train::layer_norm(x, &n.weight.t, &n.bias.t, eps as f32);
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
        kernels::frozen_matmul(x, w)
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

    fn layer(
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
        let probs = if q.device().is_cpu() && q.dtype() == DType::F32 {
            kernels::train::masked_softmax(&q.matmul(&k.t()?)?, self.lengths, scale as f32)?
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
            HiddenAct::Gelu => kernels::train::gelu(&x)?,
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
