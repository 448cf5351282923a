//! Embedding and re-ranking.

use std::sync::Arc;

use aside_adapters::{Adapter, Task};

use super::batcher::Text;
use super::types::{EmbedRequest, EmbedResponse, RerankRequest, RerankResponse, RerankResult};
use super::{Core, Error, Result};

/// One input of a compatible client: a text, or token ids of the model's vocabulary
/// (without special tokens).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Ids(Vec<u32>),
}

/// How a compatible client wants its inputs embedded.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedOptions {
    /// L2-normalise (None: the adapter's or the model's own setting).
    pub normalize: Option<bool>,
    /// Refuse (413) an input over the max length instead of truncating it.
    pub reject_long: bool,
    /// Truncate from the start of an input instead of its end.
    pub truncate_left: bool,
    /// Every token's vector (laid end to end) instead of one pooled vector.
    pub all_tokens: bool,
    /// Count the tokens the inputs cost (a tokenisation pass of its own).
    pub count_tokens: bool,
}

/// Vectors, the adapter version that made them, and (when asked for) the tokens
/// they cost.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub adapter_version: Option<String>,
    pub tokens: Option<usize>,
}

/// The probability a logit stands for.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn non_empty(field: &str, inputs: &[String]) -> Result<()> {
    if inputs.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// Results sorted by score, best first (ties by index).
pub fn ranked(scores: Vec<f32>) -> Vec<RerankResult> {
    let mut order: Vec<RerankResult> = scores
        .into_iter()
        .enumerate()
        .map(|(index, score)| RerankResult { index, score })
        .collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    order
}

impl Core {
    /// Embeds texts with an adapter (its current version) or the bare backbone.
    pub async fn embed(&self, r: EmbedRequest) -> Result<EmbedResponse> {
        non_empty("inputs", &r.inputs)?;
        let (version, adapter) = self.retrieval_adapter(r.adapter.as_deref())?;
        let texts = r.inputs.into_iter().map(Text::Single).collect();
        let embeddings = self.embed_texts(texts, adapter).await?;
        Ok(EmbedResponse {
            embeddings,
            adapter_version: version,
        })
    }

    /// Scores texts against a query with a rerank adapter; best first.
    pub async fn rerank(&self, r: RerankRequest) -> Result<RerankResponse> {
        non_empty("texts", &r.texts)?;
        let (info, a) = self.adapter_for(&r.adapter, Task::Rerank)?;
        let scores = self.score_pairs(a, &r.query, &r.texts, true).await?;
        Ok(RerankResponse {
            results: ranked(scores),
            adapter_version: info.version,
        })
    }

    /// Embeds texts or token ids as compatible clients ask (normalisation, long
    /// inputs refused or truncated from either end), counting their tokens.
    pub async fn embed_inputs(
        &self,
        inputs: Vec<EmbedInput>,
        adapter: Option<&str>,
        opts: EmbedOptions,
    ) -> Result<Embedded> {
        if inputs.is_empty() {
            return Err(Error::invalid("input", "must not be empty"));
        }
        self.check_count(inputs.len())?;
        let (version, adapter) = self.retrieval_adapter(adapter)?;
        let vocab = self.backbone.tokens().vocab_size() as u32;
        for (n, i) in inputs.iter().enumerate() {
            if let EmbedInput::Ids(ids) = i {
                if let Some(bad) = ids.iter().find(|&&x| x >= vocab) {
                    return Err(Error::invalid(
                        format!("input[{n}]"),
                        format!("token id {bad} is outside the vocabulary (0..{vocab})"),
                    ));
                }
            }
        }
        let texts: Vec<Text> = inputs
            .into_iter()
            .map(|i| match i {
                EmbedInput::Text(t) => Text::Single(t),
                EmbedInput::Ids(ids) => Text::Ids(ids),
            })
            .collect();
        let reject = opts.reject_long || self.limits.reject_long_inputs;
        let max = self.limits.max_length;
        let lengths = match reject || opts.count_tokens {
            true => Some(self.input_lengths(&texts)?),
            false => None,
        };
        if reject {
            self.check_long(lengths.as_deref().unwrap_or_default())?;
        }
        let tokens = lengths.map(|l| l.iter().map(|len| (*len).min(max)).sum());
        let mut pooling = self.pooling_of(adapter.as_ref());
        if let Some(n) = opts.normalize {
            pooling.normalize = n;
        }
        if opts.all_tokens {
            pooling.pooling = aside_backbone::Pooling::Tokens;
        }
        let vectors = self
            .batcher
            .submit_from(texts, adapter, pooling, max, opts.truncate_left)
            .await
            .map_err(Error::Internal)?;
        Ok(Embedded {
            vectors,
            adapter_version: version,
            tokens,
        })
    }

    /// The backbone's id as clients name a model: its folder's name.
    pub fn model_id(&self) -> String {
        self.backbone
            .files()
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "backbone".into())
    }

    /// A model name as compatible clients send it: the backbone's id (with or
    /// without an organisation, e.g. `sentence-transformers/all-MiniLM-L6-v2`),
    /// `base` or nothing for the bare backbone, else an adapter of `task`.
    pub fn resolve_model(&self, model: Option<&str>, task: Task) -> Result<Option<String>> {
        let id = self.model_id();
        let m = match model.map(str::trim) {
            None | Some("") | Some("base") => return Ok(None),
            Some(m) => m,
        };
        if m == id || m.rsplit('/').next() == Some(id.as_str()) {
            return Ok(None);
        }
        match self.registry.get(m) {
            Ok((_, a)) if a.task() == task => Ok(Some(m.to_owned())),
            Ok((_, a)) => Err(Error::WrongTask {
                adapter: m.to_owned(),
                has: a.task().to_string(),
                needs: task.to_string(),
            }),
            Err(_) => {
                let mut known = vec![format!("{id} (the backbone)")];
                known.extend(
                    self.registry
                        .list()
                        .into_iter()
                        .filter(|i| i.task == task.to_string())
                        .map(|i| i.name),
                );
                Err(Error::UnknownModel {
                    name: m.to_owned(),
                    known,
                })
            }
        }
    }

    /// The one rerank adapter stored, for clients that name none (TEI's shape).
    pub fn only_reranker(&self) -> Result<String> {
        let rerankers: Vec<String> = self
            .registry
            .list()
            .into_iter()
            .filter(|i| i.task == "rerank")
            .map(|i| i.name)
            .collect();
        match rerankers.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::invalid("adapter", "no rerank adapter is loaded")),
            _ => Err(Error::invalid(
                "adapter",
                format!(
                    "several rerank adapters are loaded ({}); name one",
                    rerankers.join(", ")
                ),
            )),
        }
    }

    /// Scores (query, text) pairs with a rerank adapter, in input order; a client's
    /// texts (`limited`) within the request limits.
    pub(crate) async fn score_pairs(
        &self,
        adapter: Arc<Adapter>,
        query: &str,
        texts: &[String],
        limited: bool,
    ) -> Result<Vec<f32>> {
        let pairs = texts
            .iter()
            .map(|t| Text::Pair(query.to_owned(), t.clone()))
            .collect();
        let pooled = match limited {
            true => self.embed_texts(pairs, Some(adapter.clone())).await?,
            false => self.run_batch(pairs, Some(adapter.clone())).await?,
        };
        pooled
            .iter()
            .map(|v| {
                adapter
                    .head_score(v)
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .ok_or_else(|| Error::Internal("rerank adapter without a head".into()))
            })
            .collect()
    }
}
