//! The frozen BERT-family encoder that every task shares.
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | `config.json`, pooling config, the model folder's files |
//! | `tokenize.rs` | the tokenizer with our truncation (no padding) |
//! | `model/` | the weights and the batched forward with hook points; the one place that picks CPU kernels or device ops |
//! | `cpu/` | the CPU kernels over plain slices, one concern a file (no tensor types) |
//! | `ops/` | those kernels as tensor operations (serving, and differentiable for training) |
//! | `precision.rs` | f32, int8, int8-fast (CPU kernels), f16, bf16 (device ops) |
//! | `hooks.rs` | the [`Hooks`] trait adapters implement, row groups |
//! | `pooling.rs` | cls / mean pooling, L2 normalisation |
//! | `encoder.rs` | [`Backbone`]: load a folder, encode inputs in batches |
//! | `testing.rs` | a tiny random BERT folder for fast tests |
//!
//! The backbone knows no adapter file format: adapters reach it only through [`Hooks`].

mod config;
pub mod cpu;
mod encoder;
mod error;
mod hooks;
mod model;
pub mod ops;
pub mod pooling;
mod precision;
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
pub use precision::Precision;
pub use tokenize::{Encoded, Input, Tokens};
