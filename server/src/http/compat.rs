//! The request shapes of other servers' clients, over the same core: TEI's
//! `/embed` and `/rerank`, OpenAI's `/v1/embeddings`.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::handlers::with_adapter;
use super::json::ApiJson;
use crate::core::types::{EmbedRequest, ErrorBody, RerankRequest};
use crate::core::{Error, Shared};

/// A string or a list of strings, with a message that says so otherwise.
#[derive(Debug, Clone)]
pub struct OneOrMany(pub Vec<String>);

/// A string or a list of strings (the schema of [`OneOrMany`]).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(OneOrMany(vec![s])),
            serde_json::Value::Array(a) if a.iter().all(|v| v.is_string()) => Ok(OneOrMany(
                a.into_iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect(),
            )),
            _ => Err(serde::de::Error::custom(
                "expected a string or a list of strings",
            )),
        }
    }
}

/// TEI's embed request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiEmbed {
    #[schema(value_type = StringOrList)]
    inputs: OneOrMany,
    /// Extension: a retrieval adapter's name.
    #[serde(default)]
    adapter: Option<String>,
    /// L2-normalise the vectors.
    #[serde(default)]
    normalize: Option<bool>,
}

/// TEI-compatible embed
#[utoipa::path(post, path = "/embed", tag = "compatible", request_body = TeiEmbed,
    responses((status = 200, description = "One vector per input (TEI's shape)", body = Vec<Vec<f32>>),
              (status = "4XX", description = "Invalid input, unknown adapter", body = ErrorBody)))]
pub async fn tei_embed(
    State(c): State<Shared>,
    ApiJson(r): ApiJson<TeiEmbed>,
) -> Result<Response, Error> {
    let out = c
        .embed(EmbedRequest {
            inputs: r.inputs.0,
            adapter: r.adapter.clone(),
        })
        .await?;
    let mut v = out.embeddings;
    if r.normalize == Some(true) {
        v.iter_mut()
            .for_each(|x| aside_backbone::pooling::l2_normalize_vec(x));
    }
    Ok(with_adapter(Json(v), r.adapter.as_deref()))
}

/// TEI's rerank request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiRerank {
    query: String,
    texts: Vec<String>,
    /// Extension: the rerank adapter; optional when exactly one is stored.
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    return_text: bool,
}

/// One of TEI's rerank results.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiRank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// TEI-compatible rerank
#[utoipa::path(post, path = "/rerank", tag = "compatible", request_body = TeiRerank,
    responses((status = 200, description = "Best first (TEI's shape)", body = Vec<TeiRank>),
              (status = "4XX", description = "Invalid input, unknown adapter, wrong task", body = ErrorBody)))]
pub async fn tei_rerank(
    State(c): State<Shared>,
    ApiJson(r): ApiJson<TeiRerank>,
) -> Result<Response, Error> {
    let name = match r.adapter {
        Some(n) => n,
        None => c.only_reranker()?,
    };
    let texts = r.texts;
    let out = c
        .rerank(RerankRequest {
            query: r.query,
            texts: texts.clone(),
            adapter: name.clone(),
        })
        .await?;
    let ranks: Vec<TeiRank> = out
        .results
        .into_iter()
        .map(|x| TeiRank {
            index: x.index,
            score: x.score,
            text: r.return_text.then(|| texts[x.index].clone()),
        })
        .collect();
    Ok(with_adapter(Json(ranks), Some(&name)))
}

/// OpenAI's embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAiEmbeddings {
    #[schema(value_type = StringOrList)]
    input: OneOrMany,
    /// A retrieval adapter's name; empty or `base` for the bare backbone.
    #[serde(default)]
    model: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiEmbeddingList {
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: OpenAiUsage,
}

/// OpenAI-compatible embeddings (model = adapter name, or `base`)
#[utoipa::path(post, path = "/v1/embeddings", tag = "compatible", request_body = OpenAiEmbeddings,
    responses((status = 200, description = "OpenAI's shape", body = OpenAiEmbeddingList),
              (status = "4XX", description = "Invalid input, unknown model", body = ErrorBody)))]
pub async fn openai_embeddings(
    State(c): State<Shared>,
    ApiJson(r): ApiJson<OpenAiEmbeddings>,
) -> Result<Response, Error> {
    let inputs = r.input.0;
    if inputs.is_empty() {
        return Err(Error::invalid("input", "must not be empty"));
    }
    let adapter = match r.model.as_str() {
        "" | "base" => None,
        n => Some(n.to_owned()),
    };
    let refs: Vec<aside_backbone::Input<'_>> = inputs
        .iter()
        .map(|t| aside_backbone::Input::Single(t))
        .collect();
    let tokens: usize = c
        .backbone
        .tokens()
        .encode(&refs, c.limits.max_length)
        .map_err(Error::from)?
        .iter()
        .map(|e| e.ids.len())
        .sum();
    let out = c.embed(EmbedRequest { inputs, adapter }).await?;
    let data = out
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding,
        })
        .collect();
    let model = if r.model.is_empty() {
        "base".to_owned()
    } else {
        r.model
    };
    let body = Json(OpenAiEmbeddingList {
        object: "list",
        data,
        model: model.clone(),
        usage: OpenAiUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    });
    Ok(with_adapter(body, Some(&model)))
}
