//! The CPU kernels of the serving and training paths, over plain slices: no tensor
//! type appears here (the tensor-facing wrappers are in [`crate::ops`]). One concern
//! a file:
//!
//! | file | owns |
//! |---|---|
//! | `features.rs` | the CPU-feature checks every `unsafe` kernel call relies on |
//! | `matmul.rs` | prepacked f32 / int8 products of the frozen linears (AVX-512 micro-kernels), the portable `gemm` product |
//! | `quantize.rs` | int8 weight planes, per-row activation quantisation, smoothing |
//! | `attention.rs` | masked multi-head attention per (sequence, head), masked softmax |
//! | `activation.rs` | GELU / SiLU / tanh / ReLU epilogues, `exp`, `erf` |
//! | `norm.rs` | residual add + LayerNorm, the training LayerNorm and its backward |
//! | `bottleneck.rs` | the adapter bottleneck `t + U act(D x)`, its prepared weights |
//! | `embed.rs` | the embedding sum, mean pooling |
//! | `vector.rs` | lane-parallel reductions and adds the others share |

pub mod activation;
pub mod attention;
pub mod bottleneck;
pub mod embed;
pub mod features;
pub mod matmul;
pub mod norm;
mod quantize;
mod vector;

pub use activation::Epilogue;
pub use bottleneck::BottleneckWeights;
pub use matmul::PackedWeight;
