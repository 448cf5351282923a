//! Embedding and re-ranking.

use std::sync::Arc;

use aside_adapters::{Adapter, Task};

use super::batcher::Text;
use super::types::{EmbedRequest, EmbedResponse, RerankRequest, RerankResponse, RerankResult};
use super::{Core, Error, Result};

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
        let (version, adapter) = match &r.adapter {
            Some(n) => {
                let (i, a) = self.adapter_for(n, Task::Retrieval)?;
                (Some(i.version), Some(a))
            }
            None => (None, None),
        };
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
