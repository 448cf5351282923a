//! The core service: every operation of the server as a typed method, with no
//! transport type in it. HTTP (`crate::http`) and gRPC (`crate::grpc`) decode a
//! request, call one method here, and encode its answer or [`Error`].
//!
//! A request's path: transport → core (validation, the adapter version to use) →
//! the batcher (the only place inference runs; adapters and backbone) and the
//! index (collections).

pub mod adapters;
pub mod batcher;
pub mod collections;
pub mod error;
pub mod inference;
mod reembed;
pub mod stores;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aside_adapters::{Adapter, AdapterInfo as StoredInfo, Registry, Task};
use aside_backbone::{Backbone, PoolingConfig};
use parking_lot::Mutex;

use self::batcher::{Batcher, Text};
pub use self::error::{Error, Result};
pub use self::stores::Stores;
use self::types::{Info, Reembed};
use crate::metrics::Metrics;

/// A max length no input reaches: lengths measured before truncation.
const UNTRUNCATED: usize = 1_000_000;

/// Limits and keys of a running server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tokens per input (special tokens included).
    pub max_length: usize,
    /// Refuse longer inputs (413) instead of truncating them.
    pub reject_long_inputs: bool,
    pub max_inputs: usize,
    /// Documents in one upsert (embedded in batches of `max_inputs`).
    pub max_documents: usize,
    /// The token budget of one inference batch (reported on `/info`).
    pub max_batch_tokens: usize,
    pub body_limit: usize,
    pub adapter_body_limit: usize,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// A request's headers must arrive within this (also the longest a kept-alive
    /// HTTP connection stays idle).
    pub header_timeout: Duration,
    /// A request's body must arrive within this; it is read before the request
    /// takes an in-flight slot.
    pub body_timeout: Duration,
    pub admin_key: Option<String>,
    pub read_key: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_length: aside_backbone::DEFAULT_MAX_LENGTH,
            reject_long_inputs: false,
            max_inputs: 256,
            max_documents: 10_000,
            max_batch_tokens: 16_384,
            body_limit: 32 << 20,
            adapter_body_limit: 256 << 20,
            max_in_flight: 512,
            request_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(120),
            admin_key: None,
            read_key: None,
        }
    }
}

/// Everything a running server holds: one backbone, the adapter registry, the
/// collections, the batching queue.
pub struct Core {
    pub backbone: Arc<Backbone>,
    pub registry: Arc<Registry>,
    pub stores: Stores,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Requests in flight, over both transports (429 beyond the limit).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    reembeds: Mutex<HashMap<String, Reembed>>,
    /// Held while a collection takes an adapter and while an adapter is deleted, so
    /// the two cannot both succeed.
    adapter_use: tokio::sync::Mutex<()>,
    started: Instant,
}

pub type Shared = Arc<Core>;

impl Core {
    pub fn new(
        backbone: Arc<Backbone>,
        registry: Arc<Registry>,
        stores: Stores,
        batcher: Batcher,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Shared {
        Arc::new(Core {
            backbone,
            registry,
            stores,
            batcher,
            metrics,
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)),
            limits,
            reembeds: Mutex::default(),
            adapter_use: tokio::sync::Mutex::new(()),
            started: Instant::now(),
        })
    }

    /// Model and server facts.
    pub fn info(&self) -> Info {
        let c = self.backbone.config();
        Info {
            version: env!("CARGO_PKG_VERSION").into(),
            model: self.backbone.files().dir.display().to_string(),
            backbone_sha256: self.backbone.sha256().to_owned(),
            precision: self.backbone.bert().precision().name().to_owned(),
            hidden_size: c.hidden_size,
            layers: c.num_hidden_layers,
            backbone_params: self.backbone.bert().parameter_count(),
            pooling: self.backbone.pooling().pooling.to_string(),
            normalize: self.backbone.pooling().normalize,
            max_length: self.limits.max_length,
            max_inputs: self.limits.max_inputs,
            adapters: self.registry.list().len(),
            collections: self.stores.count(),
            uptime_seconds: self.started.elapsed().as_secs(),
            model_id: self.model_id(),
            model_sha: self.backbone.sha256().to_owned(),
            model_dtype: "float32".into(),
            model_type: serde_json::json!({"embedding": {
                "pooling": self.backbone.pooling().pooling.to_string()}}),
            max_concurrent_requests: self.limits.max_in_flight,
            max_input_length: self.limits.max_length,
            max_batch_tokens: self.limits.max_batch_tokens,
            max_client_batch_size: self.limits.max_inputs,
        }
    }

    /// The Prometheus text of the metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .render(self.batcher.depth(), &self.registry.stats())
    }

    /// Embeds a client's texts through the batcher with an adapter (or the bare
    /// backbone), within the request limits (inputs per request, input length).
    pub(crate) async fn embed_texts(
        &self,
        texts: Vec<Text>,
        adapter: Option<Arc<Adapter>>,
    ) -> Result<Vec<Vec<f32>>> {
        self.check_lengths(&texts)?;
        self.run_batch(texts, adapter).await
    }

    /// Embeds texts the server chose itself (re-ranking a search's candidates,
    /// re-embedding a collection): no per-request limits, long inputs truncated.
    pub(crate) async fn run_batch(
        &self,
        texts: Vec<Text>,
        adapter: Option<Arc<Adapter>>,
    ) -> Result<Vec<Vec<f32>>> {
        let pooling = self.pooling_of(adapter.as_ref());
        self.batcher
            .submit(texts, adapter, pooling, self.limits.max_length)
            .await
            .map_err(Error::Internal)
    }

    /// The pooling and normalisation of an adapter's outputs (or the backbone's).
    pub(crate) fn pooling_of(&self, adapter: Option<&Arc<Adapter>>) -> PoolingConfig {
        match adapter {
            Some(a) => a.pooling(self.backbone.pooling()),
            None => self.backbone.pooling(),
        }
    }

    fn check_lengths(&self, texts: &[Text]) -> Result<()> {
        self.check_count(texts.len())?;
        if self.limits.reject_long_inputs {
            self.check_long(&self.input_lengths(texts)?)?;
        }
        Ok(())
    }

    /// At most `--max-inputs` inputs in one request.
    pub(crate) fn check_count(&self, n: usize) -> Result<()> {
        if n > self.limits.max_inputs {
            return Err(Error::too_large(format!(
                "{n} inputs in one request; the limit is {}",
                self.limits.max_inputs
            )));
        }
        Ok(())
    }

    /// Refuses the first input longer than the max length (413).
    pub(crate) fn check_long(&self, lengths: &[usize]) -> Result<()> {
        let limit = self.limits.max_length;
        if let Some((i, len)) = lengths.iter().enumerate().find(|(_, l)| **l > limit) {
            return Err(Error::too_large(format!(
                "input {i} has {len} tokens; the limit is {limit}"
            )));
        }
        Ok(())
    }

    /// Each input's length in tokens before truncation, special tokens included
    /// (a pair counts both texts; token ids count with their [CLS] and [SEP]).
    pub(crate) fn input_lengths(&self, texts: &[Text]) -> Result<Vec<usize>> {
        let inputs: Vec<aside_backbone::Input<'_>> = texts
            .iter()
            .filter_map(|t| match t {
                Text::Single(a) => Some(aside_backbone::Input::Single(a)),
                Text::Pair(a, b) => Some(aside_backbone::Input::Pair(a, b)),
                Text::Ids(_) => None,
            })
            .collect();
        let mut encoded = self
            .backbone
            .tokens()
            .encode(&inputs, UNTRUNCATED)?
            .into_iter()
            .map(|e| e.ids.len());
        Ok(texts
            .iter()
            .map(|t| match t {
                Text::Ids(ids) => ids.len() + 2,
                _ => encoded.next().expect("one encoding per text"),
            })
            .collect())
    }

    /// A retrieval adapter's current version and the adapter, or none for the bare
    /// backbone.
    pub(crate) fn retrieval_adapter(
        &self,
        name: Option<&str>,
    ) -> Result<(Option<String>, Option<Arc<Adapter>>)> {
        match name {
            Some(n) => {
                let (i, a) = self.adapter_for(n, Task::Retrieval)?;
                Ok((Some(i.version), Some(a)))
            }
            None => Ok((None, None)),
        }
    }

    /// The current version of a named adapter, checked for the task the operation
    /// needs.
    pub fn adapter_for(&self, name: &str, task: Task) -> Result<(StoredInfo, Arc<Adapter>)> {
        let (info, a) = self.registry.get(name)?;
        if a.task() != task {
            return Err(Error::WrongTask {
                adapter: name.to_owned(),
                has: a.task().to_string(),
                needs: task.to_string(),
            });
        }
        Ok((info, a))
    }
}

/// Runs blocking work (fsync, index writes, adapter parsing) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}
