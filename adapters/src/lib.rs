//! Adapter kinds (method.md), their files, and the registry that serves them.
//!
//! ```text
//!   bytes ──format.rs──► (metadata, tensors) ──spec.rs + layout.rs──► Adapter (adapter.rs)
//!   PEFT folder ──peft.rs──► native tensors + metadata ─┘                 │ implements
//!   registry.rs: name → versions on disk, current version, LRU of resident Arcs   ▼
//!                                                               aside_backbone::Hooks
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `spec.rs` | kinds, tasks, activations, the `__metadata__` keys |
//! | `layout.rs` | which tensors each kind has and their shapes |
//! | `adapter.rs` | the validated [`Adapter`] and its forward at the hook points |
//! | `format.rs` | reading and writing the native safetensors file |
//! | `peft.rs` | converting Hugging Face PEFT LoRA folders |
//! | `registry.rs` | named versions, atomic swap, on-disk store, LRU |
//! | `testing.rs` | seeded random adapters for tests and fixtures |

mod adapter;
mod error;
pub mod format;
pub mod layout;
pub mod peft;
pub mod registry;
pub mod spec;
pub mod testing;

pub use adapter::{Adapter, Bottleneck};
pub use error::{AdapterError, Result};
pub use layout::Dims;
pub use registry::{AdapterInfo, PutOutcome, Registry, RegistryOptions, RegistryStats};
pub use spec::{Activation, Kind, Meta, Task};
