//! A tiny random BERT model folder (2 layers, hidden 32), generated rather than
//! downloaded, so tests across the workspace run fast without the real model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

/// The shape of the tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinyBert {
    pub seed: u64,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    /// Store weights under `bert.`-prefixed names, as `BertForMaskedLM` checkpoints do.
    pub bert_prefix: bool,
    /// Pooling written to `1_Pooling/config.json`.
    pub pooling: crate::Pooling,
}

impl Default for TinyBert {
    fn default() -> Self {
        TinyBert {
            seed: 7,
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            max_positions: 64,
            bert_prefix: false,
            pooling: crate::Pooling::Mean,
        }
    }
}

/// A small deterministic RNG (splitmix64 + Box-Muller) so fixtures need no extra crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, std: f32, mean: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.normal()).collect()
    }
}

/// The vocabulary of the tiny tokenizer: specials, letters, digits, punctuation,
/// a few whole words, and `##` continuations of every letter and digit.
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    v.extend(chars.iter().map(|c| c.to_string()));
    v.extend(".,;:!?'\"()-/%".chars().map(|c| c.to_string()));
    v.extend(
        [
            "the", "a", "of", "and", "is", "in", "to", "cell", "cells", "protein", "gene",
            "cancer", "this", "example", "sentence", "hello", "world",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v.extend(chars.iter().map(|c| format!("##{c}")));
    v
}

fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let special = |id: usize, s: &str| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": {"max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"),
                         special(3, "[SEP]"), special(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    })
}

impl TinyBert {
    /// Writes `config.json`, `tokenizer.json`, `model.safetensors` and
    /// `1_Pooling/config.json` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow_free::Result<()> {
        std::fs::create_dir_all(dir.join("1_Pooling"))?;
        let vocab = tiny_vocab();
        let (d, i, l) = (self.hidden, self.intermediate, self.layers);
        let config = json!({
            "architectures": ["BertModel"], "model_type": "bert",
            "vocab_size": vocab.len(), "hidden_size": d, "num_hidden_layers": l,
            "num_attention_heads": self.heads, "intermediate_size": i, "hidden_act": "gelu",
            "max_position_embeddings": self.max_positions, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute"
        });
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
        std::fs::write(
            dir.join("tokenizer.json"),
            serde_json::to_vec(&tokenizer_json(&vocab))?,
        )?;
        let pooling = json!({
            "word_embedding_dimension": d,
            "pooling_mode_cls_token": self.pooling == crate::Pooling::Cls,
            "pooling_mode_mean_tokens": self.pooling == crate::Pooling::Mean,
        });
        std::fs::write(
            dir.join("1_Pooling").join("config.json"),
            serde_json::to_vec_pretty(&pooling)?,
        )?;

        let mut rng = Rng::new(self.seed);
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let prefix = if self.bert_prefix { "bert." } else { "" };
        let mut put = |name: String, shape: &[usize], std: f32, mean: f32| {
            let n = shape.iter().product();
            let t =
                Tensor::from_vec(rng.normals(n, std, mean), shape, &Device::Cpu).expect("tensor");
            tensors.insert(format!("{prefix}{name}"), t);
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            &[vocab.len(), d],
            0.5,
            0.0,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            &[self.max_positions, d],
            0.2,
            0.0,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, d],
            0.2,
            0.0,
        );
        put("embeddings.LayerNorm.weight".into(), &[d], 0.1, 1.0);
        put("embeddings.LayerNorm.bias".into(), &[d], 0.1, 0.0);
        for layer in 0..l {
            for site in crate::Site::ALL {
                let (inp, out) = match site {
                    crate::Site::Inter => (d, i),
                    crate::Site::Out => (i, d),
                    _ => (d, d),
                };
                let p = site.tensor_prefix(layer);
                put(
                    format!("{p}.weight"),
                    &[out, inp],
                    1.0 / (inp as f32).sqrt(),
                    0.0,
                );
                put(format!("{p}.bias"), &[out], 0.1, 0.0);
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("encoder.layer.{layer}.{ln}.weight"), &[d], 0.1, 1.0);
                put(format!("encoder.layer.{layer}.{ln}.bias"), &[d], 0.1, 0.0);
            }
        }
        // A pooler, as real checkpoints carry; the encoder ignores it.
        put("pooler.dense.weight".into(), &[d, d], 0.1, 0.0);
        put("pooler.dense.bias".into(), &[d], 0.1, 0.0);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }
}

/// Boxed errors for the fixture writer (the crate keeps `anyhow` out of its API).
pub mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

/// The real default model for tests: `$ASIDE_TEST_MODEL`, else
/// `models/all-MiniLM-L6-v2` at the workspace root (`crate_dir/..`). Returns `None`
/// with a printed reason when it is absent, unless `ASIDE_REQUIRE_MODEL=1` (CI),
/// where absence is a failure.
pub fn real_model(crate_dir: &str) -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("ASIDE_TEST_MODEL") {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(crate_dir).join("../models/all-MiniLM-L6-v2"),
    };
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "real model not found at {} (run scripts/fetch-model.sh)",
        dir.display()
    );
    if std::env::var("ASIDE_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!("{msg}, and ASIDE_REQUIRE_MODEL=1");
    }
    eprintln!("SKIPPED: {msg}");
    None
}
