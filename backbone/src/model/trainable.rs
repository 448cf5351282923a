//! Copies of the encoder for fine-tuning: every weight a trainable variable, and back
//! to a frozen copy fit for the fast inference path.

use candle_core::Tensor;

use super::{Bert, Dense, Layer, Named, Norm};
use crate::error::Result;
use crate::hooks::Site;
use crate::precision::Precision;

impl Bert {
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
            dtype: self.dtype,
        };
        Ok((bert, vars))
    }

    /// A frozen copy of the current values (e.g. of a [`Bert::trainable`] model being
    /// trained), fit for the fast inference path.
    pub fn frozen_copy(&self) -> Result<Bert> {
        let c = |t: &Tensor| -> Result<Tensor> { Ok(t.detach().copy()?) };
        let mut bert = self.map_weights(c, c, self.dtype)?;
        bert.packed = bert.pack(Precision::F32, None)?;
        Ok(bert)
    }
}
