//! The frozen BERT encoder: weights loaded once from safetensors, and a batched
//! forward that calls the [`crate::Hooks`] of each row group at the points `hooks.rs`
//! draws. Laid out as candle's models are:
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the weights, loading, names and shapes |
//! | `forward.rs` | the forward: where the CPU kernels or candle's device ops run (one place) |
//! | `layer.rs` | one encoder layer, on either path, with the hook points |
//! | `calibration.rs` | int8: measuring the linears' input ranges, packing |
//! | `trainable.rs` | trainable and frozen copies for fine-tuning |

mod calibration;
mod forward;
mod layer;
mod trainable;

pub(crate) use calibration::TEXTS as CALIBRATION_TEXTS;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::{BertConfig, HiddenAct};
use crate::cpu::PackedWeight;
use crate::error::{Error, Result};
use crate::hooks::Site;
use crate::precision::Precision;

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
    /// The type every weight is held and computed in (f32 unless made f16 or bf16 by
    /// [`Bert::into_dtype`]).
    dtype: DType,
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
            dtype: DType::F32,
        };
        bert.packed = bert.pack(Precision::F32, None)?;
        Ok(bert)
    }

    /// The same model with every weight in `dtype` (f16 or bf16: the forward then runs
    /// candle's ops in that type, LayerNorm in f32; f32: unchanged).
    pub fn into_dtype(self, dtype: DType) -> Result<Bert> {
        if dtype == self.dtype {
            return Ok(self);
        }
        // LayerNorm runs in f32 whatever the type (see the layer's `norm`): its
        // tensors stay f32.
        self.map_weights(|t| Ok(t.to_dtype(dtype)?), |t| Ok(t.clone()), dtype)
    }

    /// A copy with `weight` applied to every tensor but the LayerNorms' and `norm` to
    /// those, held as `dtype`, with nothing packed; the stacked query/key/value bias is
    /// rebuilt from the three mapped biases.
    pub(super) fn map_weights(
        &self,
        weight: impl Fn(&Tensor) -> Result<Tensor>,
        norm: impl Fn(&Tensor) -> Result<Tensor>,
        dtype: DType,
    ) -> Result<Bert> {
        let named = |x: &Named, f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Named> {
            Ok(Named {
                name: x.name.clone(),
                t: f(&x.t)?,
            })
        };
        let n = |x: &Named| named(x, &weight);
        let ln = |x: &Norm| -> Result<Norm> {
            Ok(Norm {
                weight: named(&x.weight, &norm)?,
                bias: named(&x.bias, &norm)?,
            })
        };
        let dense = |x: &Dense| -> Result<Dense> {
            Ok(Dense {
                weight: weight(&x.weight)?,
                bias: n(&x.bias)?,
            })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for ly in &self.layers {
            let (q_bias, k_bias, v_bias) = (n(&ly.q_bias)?, n(&ly.k_bias)?, n(&ly.v_bias)?);
            layers.push(Layer {
                qkv: weight(&ly.qkv)?,
                qkv_bias: Tensor::cat(&[&q_bias.t, &k_bias.t, &v_bias.t], 0)?,
                q_bias,
                k_bias,
                v_bias,
                attn_out: dense(&ly.attn_out)?,
                ln1: ln(&ly.ln1)?,
                inter: dense(&ly.inter)?,
                out: dense(&ly.out)?,
                ln2: ln(&ly.ln2)?,
            });
        }
        Ok(Bert {
            config: self.config.clone(),
            act: self.act,
            device: self.device.clone(),
            word: weight(&self.word)?,
            position: weight(&self.position)?,
            token_type: weight(&self.token_type)?,
            emb_ln: ln(&self.emb_ln)?,
            layers,
            shapes: self.shapes.clone(),
            // Packed f32 weights serve the f32 CPU kernels only; callers pack anew.
            packed: Vec::new(),
            dtype,
        })
    }

    /// Whether this model computes in f32 on the CPU: its own kernels may run, and
    /// adapters serve with the tensors they were loaded with.
    pub fn cpu_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// The type the weights are held and computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The arithmetic of the frozen linears on the inference path.
    pub fn precision(&self) -> Precision {
        match self.dtype {
            DType::F16 => Precision::F16,
            DType::BF16 => Precision::Bf16,
            _ => self
                .packed
                .first()
                .map_or(Precision::F32, |p| Precision::of(p.qkv.packing())),
        }
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
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
}
