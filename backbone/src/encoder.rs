//! [`Backbone`]: the loaded model folder (weights, tokenizer, pooling) and the
//! batched encode loop: tokenise, sort by length, pad per batch, group rows by
//! adapter, run the forward once per batch, pool, and return in input order.

use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::config::{BertConfig, ModelFiles, Pooling, PoolingConfig};
use crate::error::{io_err, Error, Result};
use crate::hooks::{Group, Hooks};
use crate::model::{BatchInputs, Bert, Mode};
use crate::pooling::l2_normalize_vec;
use crate::precision::Precision;
use crate::tokenize::{Encoded, Input, Tokens};

/// Default maximum input length in tokens (special tokens included).
pub const DEFAULT_MAX_LENGTH: usize = 256;
/// Default number of inputs per forward pass.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// How to load a model folder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Arithmetic of the frozen linears (f32 by default).
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            precision: Precision::F32,
        }
    }
}

/// How to encode a set of inputs.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub max_length: usize,
    pub batch_size: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            max_length: DEFAULT_MAX_LENGTH,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// One input to encode, with the adapter hooks and output shape it asks for.
#[derive(Clone, Copy)]
pub struct Item<'a> {
    pub input: Input<'a>,
    pub hooks: Option<&'a dyn Hooks>,
    pub pooling: Pooling,
    pub normalize: bool,
}

/// The frozen backbone all tasks share: load once, wrap in an `Arc`, never mutate.
#[derive(Debug)]
pub struct Backbone {
    bert: Bert,
    tokens: Tokens,
    pooling: PoolingConfig,
    sha256: String,
    files: ModelFiles,
}

impl Backbone {
    /// Loads a model folder (`config.json`, `tokenizer.json`, `model.safetensors`,
    /// optional `1_Pooling/config.json` and `modules.json`).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::in_dir(dir)?;
        let config = BertConfig::from_file(&files.config)?;
        let pooling = PoolingConfig::from_dir(dir)?;
        let tokens = Tokens::from_file(&files.tokenizer)?;
        let sha256 = sha256_file(&files.weights)?;
        let bert = Bert::load(config, &files.weights, &opts.device)?;
        let mut b = Backbone {
            bert,
            tokens,
            pooling,
            sha256,
            files,
        };
        if matches!(opts.precision, Precision::F16 | Precision::Bf16) {
            b.bert = b.bert.into_dtype(opts.precision.dtype())?;
        }
        if opts.precision.is_int8() {
            let inputs: Vec<Input<'_>> = crate::model::CALIBRATION_TEXTS
                .iter()
                .map(|t| Input::Single(t))
                .collect();
            let max = DEFAULT_MAX_LENGTH.min(b.config().max_position_embeddings);
            let encs = b.tokens.encode(&inputs, max)?;
            let batch = b.pad(&encs.iter().collect::<Vec<_>>())?;
            b.bert = b.bert.into_int8(&batch, opts.precision)?;
        }
        Ok(b)
    }

    /// The same tokenizer, pooling and files around other weights of the same shapes
    /// (a fine-tuned copy); `sha256` names the new weights.
    pub fn with_bert(&self, bert: Bert, sha256: String) -> Backbone {
        Backbone {
            bert,
            tokens: self.tokens.clone(),
            pooling: self.pooling,
            sha256,
            files: self.files.clone(),
        }
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The model folder's own pooling and normalisation.
    pub fn pooling(&self) -> PoolingConfig {
        self.pooling
    }

    /// sha256 of `model.safetensors`: the identity adapters record as `backbone`.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    pub fn hidden_size(&self) -> usize {
        self.bert.config().hidden_size
    }

    /// A plain item for this backbone (no adapter, its own pooling).
    pub fn item<'a>(&self, text: &'a str) -> Item<'a> {
        Item {
            input: Input::Single(text),
            hooks: None,
            pooling: self.pooling.pooling,
            normalize: self.pooling.normalize,
        }
    }

    /// Embeds texts with the backbone alone and its own pooling.
    pub fn embed(&self, texts: &[&str], opts: &EncodeOptions) -> Result<Vec<Vec<f32>>> {
        let items: Vec<Item<'_>> = texts.iter().map(|t| self.item(t)).collect();
        self.encode(&items, opts)
    }

    /// Validates the options against the model.
    pub fn check_options(&self, opts: &EncodeOptions) -> Result<()> {
        let max_pos = self.config().max_position_embeddings;
        if opts.max_length < 4 || opts.max_length > max_pos {
            return Err(Error::Input(format!(
                "max length {} is out of range (4..={max_pos} for this model)",
                opts.max_length
            )));
        }
        if opts.batch_size == 0 {
            return Err(Error::Input("batch size must be at least 1".into()));
        }
        Ok(())
    }

    /// Encodes items and returns one pooled vector per item, in input order.
    pub fn encode(&self, items: &[Item<'_>], opts: &EncodeOptions) -> Result<Vec<Vec<f32>>> {
        self.check_options(opts)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<Input<'_>> = items.iter().map(|i| i.input).collect();
        let encoded = self.tokens.encode(&inputs, opts.max_length)?;
        self.encode_tokens(items, &encoded, opts.batch_size)
    }

    /// Encodes already tokenised items (`encoded[i]` belongs to `items[i]`).
    pub fn encode_tokens(
        &self,
        items: &[Item<'_>],
        encoded: &[Encoded],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        // Longest first, so each batch pads to nearly its own length.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].ids.len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); items.len()];
        // The forward runs on a worker of the current rayon pool (the global one, or
        // the one-thread pool a server worker installs for a small batch): its many
        // small parallel regions (one per matmul, attention, activation) then split
        // work between the pool's threads instead of each being injected from
        // outside and waited for.
        rayon::scope(|_| self.encode_chunks(items, encoded, &order, batch_size, &mut out))?;
        Ok(out)
    }

    fn encode_chunks(
        &self,
        items: &[Item<'_>],
        encoded: &[Encoded],
        order: &[usize],
        batch_size: usize,
        out: &mut [Vec<f32>],
    ) -> Result<()> {
        for chunk in order.chunks(batch_size.max(1)) {
            let mut chunk = chunk.to_vec();
            // Rows of the same adapter must be contiguous to form a group.
            chunk.sort_by_key(|&i| hooks_key(items[i].hooks));
            let vecs = self.encode_batch(items, encoded, &chunk)?;
            for (i, v) in chunk.into_iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(())
    }

    fn encode_batch(
        &self,
        items: &[Item<'_>],
        encoded: &[Encoded],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&Encoded> = rows.iter().map(|&i| &encoded[i]).collect();
        let inputs = self.pad(&refs)?;
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (r, &i) in rows.iter().enumerate() {
            let h = items[i].hooks;
            match groups.last_mut() {
                Some(g) if hooks_key(g.hooks) == hooks_key(h) => g.rows.end = r + 1,
                _ => groups.push(Group {
                    rows: r..r + 1,
                    hooks: h,
                }),
            }
        }
        let h = self.bert.forward(&inputs, &groups, Mode::Inference)?;
        // Pooled and returned in f32 whatever the model computes in.
        let h = h.to_dtype(candle_core::DType::F32)?;
        let need = |p: Pooling| rows.iter().any(|&i| items[i].pooling == p);
        let pooled = |p: Pooling| -> Result<Option<Vec<Vec<f32>>>> {
            if !need(p) {
                return Ok(None);
            }
            if p == Pooling::Mean && crate::ops::usable(&[&h]) {
                return Ok(Some(crate::ops::mean_pool(&h, &inputs.lengths)?));
            }
            let t = crate::pooling::pool(&h, &inputs.attention_mask, p)?;
            Ok(Some(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?))
        };
        let mean = pooled(Pooling::Mean)?;
        let cls = pooled(Pooling::Cls)?;
        let tokens = if need(Pooling::Tokens) {
            Some(h.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?)
        } else {
            None
        };
        let mut out = Vec::with_capacity(rows.len());
        for (r, &i) in rows.iter().enumerate() {
            if items[i].pooling == Pooling::Tokens {
                // Every real token of row r, each normalised on its own if asked.
                let rows_of = &tokens.as_ref().expect("token vectors")[r];
                let mut v = Vec::new();
                for t in rows_of.iter().take(encoded[i].ids.len()) {
                    let mut t = t.clone();
                    if items[i].normalize {
                        l2_normalize_vec(&mut t);
                    }
                    v.extend_from_slice(&t);
                }
                out.push(v);
                continue;
            }
            let src = match items[i].pooling {
                Pooling::Mean => mean.as_ref(),
                Pooling::Cls => cls.as_ref(),
                Pooling::Tokens => unreachable!("handled above"),
            };
            let mut v = src.expect("pooled")[r].clone();
            if items[i].normalize {
                l2_normalize_vec(&mut v);
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Pads tokenised inputs to the longest one into a batch on the model's device.
    pub fn pad(&self, encs: &[&Encoded]) -> Result<BatchInputs> {
        let b = encs.len();
        let t = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; b * t];
        let mut types = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, e) in encs.iter().enumerate() {
            let n = e.ids.len();
            ids[r * t..r * t + n].copy_from_slice(&e.ids);
            types[r * t..r * t + n].copy_from_slice(&e.type_ids);
            mask[r * t..r * t + n].iter_mut().for_each(|m| *m = 1.0);
        }
        let dev = self.bert.device();
        Ok(BatchInputs {
            input_ids: Tensor::from_vec(ids, (b, t), dev)?,
            token_type_ids: Tensor::from_vec(types, (b, t), dev)?,
            attention_mask: Tensor::from_vec(mask, (b, t), dev)?,
            lengths: encs.iter().map(|e| e.ids.len()).collect(),
        })
    }
}

/// Identity of a hooks object, for grouping rows (None sorts first).
fn hooks_key(h: Option<&dyn Hooks>) -> usize {
    h.map_or(0, |h| h as *const dyn Hooks as *const () as usize)
}

/// sha256 of a file, hex-encoded.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io_err(path))?;
    Ok(hex::encode(hasher.finalize()))
}
