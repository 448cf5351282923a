//! Making adapters and measuring them: `aside train` and `aside eval` live on this crate.
//!
//! | file | owns |
//! |---|---|
//! | `eval/` | BEIR folders, encoding with progress, trec_eval-compatible metrics |
//! | `data.rs` | training examples, the dev split, hard negatives mined with the base model |
//! | `optim.rs` | AdamW, warm-up + linear decay, gradient clipping |
//! | `train.rs` | the loop: losses, dev evaluation, checkpoints, saving |
//! | `plot.rs` | the loss-curve PNG |
//!
//! It depends on the backbone and the adapters, never the reverse.

pub mod data;
pub mod eval;
pub mod optim;
pub mod plot;
pub mod testing;
pub mod train;

pub use data::{default_dev_queries, TrainSet};
pub use train::{
    DevLog, EpochLog, Outcome, Progress, Sample, StepLog, Target, TrainConfig, Trainer, Verdict,
};
