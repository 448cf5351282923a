//! Model folder layout: `config.json` (BERT hyper-parameters), `1_Pooling/config.json`
//! (sentence-transformers pooling), optional `modules.json` (whether a Normalize module follows).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{io_err, Error, Result};

/// The subset of a Hugging Face `BertConfig` the encoder needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

/// The activation of the feed-forward block, as `hidden_act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// Exact GELU (erf), what BERT's `gelu` means.
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                path: path.to_owned(),
                message,
            })
        };
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return bad("hidden_size and num_attention_heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ));
        }
        self.activation().map_err(|m| Error::Config {
            path: path.to_owned(),
            message: m,
        })?;
        Ok(())
    }

    pub fn activation(&self) -> std::result::Result<HiddenAct, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(HiddenAct::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(HiddenAct::GeluTanh),
            "relu" => Ok(HiddenAct::Relu),
            other => Err(format!("hidden_act `{other}` is not supported")),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How token vectors become one vector per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The `[CLS]` token's vector.
    Cls,
    /// The mean of the real (unpadded) tokens' vectors.
    Mean,
    /// Not pooled: every real token's vector, laid end to end (`tokens × hidden`
    /// values). Asked for by a request, never named in a model folder.
    Tokens,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            other => Err(format!(
                "unknown pooling `{other}` (expected `cls` or `mean`)"
            )),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Tokens => "tokens",
        })
    }
}

/// Pooling and normalisation the model folder asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolingConfig {
    pub pooling: Pooling,
    pub normalize: bool,
}

#[derive(Deserialize)]
struct StPooling {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(rename = "type", default)]
    kind: String,
}

impl PoolingConfig {
    /// Reads `1_Pooling/config.json` where present (mean pooling otherwise), and
    /// `modules.json` where present to learn whether a Normalize module follows.
    /// Without `modules.json` vectors are L2-normalised, the sentence-transformers
    /// convention for cosine models such as all-MiniLM-L6-v2.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = if pooling_path.exists() {
            let text = std::fs::read_to_string(&pooling_path).map_err(io_err(&pooling_path))?;
            let p: StPooling = serde_json::from_str(&text).map_err(|e| Error::Config {
                path: pooling_path.clone(),
                message: e.to_string(),
            })?;
            if p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens {
                return Err(Error::Config {
                    path: pooling_path,
                    message: "only cls and mean pooling are supported".into(),
                });
            }
            match (p.pooling_mode_cls_token, p.pooling_mode_mean_tokens) {
                (true, false) => Pooling::Cls,
                (false, true) => Pooling::Mean,
                _ => {
                    return Err(Error::Config {
                        path: pooling_path,
                        message: "exactly one of cls or mean pooling must be enabled".into(),
                    })
                }
            }
        } else {
            Pooling::Mean
        };
        let modules_path = dir.join("modules.json");
        let normalize = if modules_path.exists() {
            let text = std::fs::read_to_string(&modules_path).map_err(io_err(&modules_path))?;
            let mods: Vec<StModule> = serde_json::from_str(&text).map_err(|e| Error::Config {
                path: modules_path.clone(),
                message: e.to_string(),
            })?;
            mods.iter().any(|m| m.kind.ends_with("Normalize"))
        } else {
            true
        };
        Ok(PoolingConfig { pooling, normalize })
    }
}

/// The files of a model folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
}

impl ModelFiles {
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let files = ModelFiles {
            dir: dir.to_owned(),
            config: dir.join("config.json"),
            tokenizer: dir.join("tokenizer.json"),
            weights: dir.join("model.safetensors"),
        };
        for p in [&files.config, &files.tokenizer, &files.weights] {
            if !p.is_file() {
                return Err(Error::Io {
                    path: p.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "missing from the model folder (run scripts/fetch-model.sh for the default model)",
                    ),
                });
            }
        }
        Ok(files)
    }
}
