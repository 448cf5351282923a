//! Embedding and re-ranking: `/v1/embed`, `/v1/rerank`, and the incumbents'
//! shapes: TEI's `/embed` and `/rerank`, OpenAI's `/v1/embeddings`.

use std::sync::Arc;

use aside_adapters::{Adapter, AdapterInfo, Task};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::batcher::Text;
use super::error::ApiError;
use super::{ApiJson, Shared};

/// The current version of a named adapter, checked for the task the route needs.
pub fn adapter_for(
    s: &Shared,
    name: &str,
    task: Task,
) -> Result<(AdapterInfo, Arc<Adapter>), ApiError> {
    let (info, a) = s.registry.get(name)?;
    if a.task() != task {
        return Err(ApiError::Unprocessable(format!(
            "adapter `{name}` has task {}, this route needs a {} adapter",
            a.task(),
            task
        )));
    }
    Ok((info, a))
}

/// Scores (query, text) pairs with a rerank adapter.
pub async fn score_pairs(
    s: &Shared,
    adapter: Arc<Adapter>,
    query: &str,
    texts: &[String],
) -> Result<Vec<f32>, ApiError> {
    let pairs = texts
        .iter()
        .map(|t| Text::Pair(query.to_owned(), t.clone()))
        .collect();
    let pooled = s.embed(pairs, Some(adapter.clone())).await?;
    pooled
        .iter()
        .map(|v| {
            adapter
                .head_score(v)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .ok_or_else(|| ApiError::Internal("rerank adapter without a head".into()))
        })
        .collect()
}

fn non_empty(inputs: &[String]) -> Result<(), ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::BadRequest("`inputs` is empty".into()));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    inputs: Vec<String>,
    #[serde(default)]
    adapter: Option<String>,
}

pub async fn embed(
    State(s): State<Shared>,
    ApiJson(r): ApiJson<EmbedRequest>,
) -> Result<Response, ApiError> {
    non_empty(&r.inputs)?;
    let (version, adapter) = match &r.adapter {
        Some(n) => {
            let (i, a) = adapter_for(&s, n, Task::Retrieval)?;
            (Some(i.version), Some(a))
        }
        None => (None, None),
    };
    let texts = r.inputs.into_iter().map(Text::Single).collect();
    let embeddings = s.embed(texts, adapter).await?;
    let mut body = serde_json::json!({"embeddings": embeddings});
    if let Some(v) = version {
        body["adapter_version"] = v.into();
    }
    Ok(with_adapter(Json(body), r.adapter.as_deref()))
}

fn with_adapter(body: impl IntoResponse, adapter: Option<&str>) -> Response {
    match adapter {
        Some(a) => ([("x-aside-adapter", a.to_owned())], body).into_response(),
        None => body.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    query: String,
    texts: Vec<String>,
    adapter: String,
}

/// Results sorted by score, best first (ties by index).
fn ranked(scores: Vec<f32>) -> Vec<serde_json::Value> {
    let mut order: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order
        .into_iter()
        .map(|(index, score)| serde_json::json!({"index": index, "score": score}))
        .collect()
}

pub async fn rerank(
    State(s): State<Shared>,
    ApiJson(r): ApiJson<RerankRequest>,
) -> Result<Response, ApiError> {
    non_empty(&r.texts)?;
    let (info, a) = adapter_for(&s, &r.adapter, Task::Rerank)?;
    let scores = score_pairs(&s, a, &r.query, &r.texts).await?;
    let body =
        Json(serde_json::json!({"results": ranked(scores), "adapter_version": info.version}));
    Ok(with_adapter(body, Some(&r.adapter)))
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
pub struct TeiEmbed {
    inputs: OneOrMany,
    /// Extension: an adapter name.
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    normalize: Option<bool>,
}

/// TEI-compatible `POST /embed`: a list of vectors.
pub async fn tei_embed(
    State(s): State<Shared>,
    ApiJson(r): ApiJson<TeiEmbed>,
) -> Result<Response, ApiError> {
    let inputs = r.inputs.into_vec();
    non_empty(&inputs)?;
    let adapter = match &r.adapter {
        Some(n) => Some(adapter_for(&s, n, Task::Retrieval)?.1),
        None => None,
    };
    let mut v = s
        .embed(inputs.into_iter().map(Text::Single).collect(), adapter)
        .await?;
    if r.normalize == Some(true) {
        v.iter_mut()
            .for_each(|x| aside_backbone::pooling::l2_normalize_vec(x));
    }
    Ok(with_adapter(Json(v), r.adapter.as_deref()))
}

#[derive(Deserialize)]
pub struct TeiRerank {
    query: String,
    texts: Vec<String>,
    /// Extension: the rerank adapter; optional when exactly one is loaded.
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    return_text: bool,
}

/// TEI-compatible `POST /rerank`: `[{index, score, text?}]`.
pub async fn tei_rerank(
    State(s): State<Shared>,
    ApiJson(r): ApiJson<TeiRerank>,
) -> Result<Response, ApiError> {
    non_empty(&r.texts)?;
    let name = match r.adapter {
        Some(n) => n,
        None => {
            let rerankers: Vec<String> = s
                .registry
                .list()
                .into_iter()
                .filter(|i| i.task == "rerank")
                .map(|i| i.name)
                .collect();
            match rerankers.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ApiError::Unprocessable(
                        "no rerank adapter is loaded".into(),
                    ))
                }
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "several rerank adapters are loaded ({}); name one in `adapter`",
                        rerankers.join(", ")
                    )))
                }
            }
        }
    };
    let (_, a) = adapter_for(&s, &name, Task::Rerank)?;
    let scores = score_pairs(&s, a, &r.query, &r.texts).await?;
    let mut out = ranked(scores);
    if r.return_text {
        for v in out.iter_mut() {
            let i = v["index"].as_u64().expect("index") as usize;
            v["text"] = r.texts[i].clone().into();
        }
    }
    Ok(with_adapter(Json(out), Some(&name)))
}

#[derive(Deserialize)]
pub struct OpenAiEmbeddings {
    input: OneOrMany,
    /// An adapter name; empty or `base` for the bare backbone.
    #[serde(default)]
    model: String,
}

/// OpenAI-compatible `POST /v1/embeddings`.
pub async fn openai_embeddings(
    State(s): State<Shared>,
    ApiJson(r): ApiJson<OpenAiEmbeddings>,
) -> Result<Response, ApiError> {
    let inputs = r.input.into_vec();
    non_empty(&inputs)?;
    let adapter = match r.model.as_str() {
        "" | "base" => None,
        n => Some(adapter_for(&s, n, Task::Retrieval)?.1),
    };
    let refs: Vec<aside_backbone::Input<'_>> = inputs
        .iter()
        .map(|t| aside_backbone::Input::Single(t))
        .collect();
    let tokens: usize = s
        .backbone
        .tokens()
        .encode(&refs, s.cfg.max_length)?
        .iter()
        .map(|e| e.ids.len())
        .sum();
    let v = s
        .embed(inputs.into_iter().map(Text::Single).collect(), adapter)
        .await?;
    let data: Vec<serde_json::Value> = v
        .into_iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
    let model = if r.model.is_empty() {
        "base".to_owned()
    } else {
        r.model.clone()
    };
    let body = Json(serde_json::json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }));
    Ok(with_adapter(body, Some(&model)))
}
