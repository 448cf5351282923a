//! The frozen BERT-family encoder that every task shares.
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | `config.json`, pooling config, the model folder's files |
//! | `tokenize.rs` | the tokenizer with our truncation (no padding) |
//! | `model.rs` | the weights and the batched forward with hook points |
//! | `kernels.rs` | fused CPU kernels of the serving path |
//! | `packed.rs` | prepacked f32 / bf16 AVX-512 matmuls of the frozen linears |
//! | `hooks.rs` | the [`Hooks`] trait adapters implement, row groups |
//! | `pooling.rs` | cls / mean pooling, L2 normalisation |
//! | `encoder.rs` | [`Backbone`]: load a folder, encode inputs in batches |
//! | `testing.rs` | a tiny random BERT folder for fast tests |
//!
//! The backbone knows no adapter file format: adapters reach it only through [`Hooks`].

mod calibration;
mod config;
mod encoder;
mod error;
mod hooks;
pub mod kernels;
mod model;
pub mod packed;
pub mod pooling;
pub mod testing;
mod tokenize;

pub use candle_core;
pub use config::{BertConfig, HiddenAct, ModelFiles, Pooling, PoolingConfig};
pub use encoder::{
    sha256_file, Backbone, EncodeOptions, Item, LoadOptions, DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH,
};
pub use error::{Error, Result};
pub use hooks::{Group, Hooks, Site, Sub};
pub use model::{BatchInputs, Bert, Mode};
pub use packed::Precision;
pub use tokenize::{Encoded, Input, Tokens};
