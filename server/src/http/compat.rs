//! The request shapes of other servers' clients, over the same core. Every field
//! such a client may send is honoured or refused with a 400 naming it — never
//! silently ignored.
//!
//! - text-embeddings-inference (TEI): `POST /` and `/embed`, `/rerank`,
//!   `/tokenize`, `/decode`; its fields on `GET /info`.
//! - OpenAI: `POST /v1/embeddings`, `GET /v1/models`.
//! - Cohere and Jina: `POST /v1/rerank` (beside aside's own shape) and `/v2/rerank`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::handlers::with_adapter;
use super::json::{from_value, ApiJson};
use crate::core::inference::{sigmoid, EmbedInput, EmbedOptions};
use crate::core::types::{ErrorBody, RerankRequest};
use crate::core::{Error, Shared};
use aside_adapters::Task;

type R = Result<Response, Error>;

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
        match Value::deserialize(d)? {
            Value::String(s) => Ok(OneOrMany(vec![s])),
            Value::Array(a) if a.iter().all(Value::is_string) => Ok(OneOrMany(
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

/// OpenAI's `input`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone)]
pub struct OpenAiInput(pub Vec<EmbedInput>);

/// The schema of [`OpenAiInput`].
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum TextsOrTokens {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

fn token_ids(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

impl<'de> Deserialize<'de> for OpenAiInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad = || {
            serde::de::Error::custom(
                "expected a string, a list of strings, a list of token ids, or a list of token-id lists",
            )
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(OpenAiInput(vec![EmbedInput::Text(s)])),
            Value::Array(a) if a.is_empty() => Ok(OpenAiInput(Vec::new())),
            Value::Array(a) if a.iter().all(Value::is_string) => Ok(OpenAiInput(
                a.into_iter()
                    .map(|v| EmbedInput::Text(v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
            )),
            Value::Array(a) if a.iter().all(Value::is_number) => {
                Ok(OpenAiInput(vec![EmbedInput::Ids(
                    token_ids(&a).ok_or_else(bad)?,
                )]))
            }
            Value::Array(a) if a.iter().all(Value::is_array) => Ok(OpenAiInput(
                a.iter()
                    .map(|l| {
                        token_ids(l.as_array().expect("array"))
                            .map(EmbedInput::Ids)
                            .ok_or_else(bad)
                    })
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(bad()),
        }
    }
}

/// TEI's `truncation_direction`.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub enum Direction {
    #[default]
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

/// TEI's embed request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiEmbed {
    #[schema(value_type = StringOrList)]
    inputs: OneOrMany,
    /// Extension: a retrieval adapter's name.
    #[serde(default)]
    adapter: Option<String>,
    /// L2-normalise the vectors (default true); false gives the pooled vector.
    #[serde(default)]
    normalize: Option<bool>,
    /// false: an input over the max length is refused (413) instead of truncated.
    #[serde(default)]
    truncate: Option<bool>,
    /// Which end a long input loses.
    #[serde(default)]
    truncation_direction: Option<Direction>,
    /// Refused: this server has no prompts configured.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    prompt_name: Option<Value>,
    /// Refused unless the backbone's own width.
    #[serde(default)]
    dimensions: Option<usize>,
}

/// TEI's truncation fields as embedding options (normalised, pooled).
fn tei_options(truncate: Option<bool>, direction: Option<Direction>) -> EmbedOptions {
    EmbedOptions {
        normalize: Some(true),
        reject_long: truncate == Some(false),
        truncate_left: matches!(direction, Some(Direction::Left)),
        all_tokens: false,
        count_tokens: false,
    }
}

fn no_prompts(p: &Option<Value>) -> Result<(), Error> {
    match p {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(Error::invalid(
            "prompt_name",
            "this server has no prompts configured",
        )),
    }
}

/// The backbone's width is the only one: all-MiniLM-L6-v2 is not
/// Matryoshka-trained, so a shorter prefix of its vectors is not a good embedding.
fn check_dimensions(c: &Shared, field: &str, d: Option<usize>) -> Result<(), Error> {
    let width = c.backbone.hidden_size();
    match d {
        Some(d) if d != width => Err(Error::invalid(
            field,
            format!(
                "{d} is not supported: {} makes {width}-dimensional vectors and was not trained to be cut shorter (Matryoshka)",
                c.model_id()
            ),
        )),
        _ => Ok(()),
    }
}

/// TEI-compatible embed
#[utoipa::path(post, path = "/embed", tag = "compatible", request_body = TeiEmbed,
    responses((status = 200, description = "One vector per input (TEI's shape)", body = Vec<Vec<f32>>),
              (status = "4XX", description = "Invalid input, unknown adapter, too long with truncate false", body = ErrorBody)))]
pub async fn tei_embed(State(c): State<Shared>, ApiJson(r): ApiJson<TeiEmbed>) -> R {
    no_prompts(&r.prompt_name)?;
    check_dimensions(&c, "dimensions", r.dimensions)?;
    let opts = EmbedOptions {
        normalize: Some(r.normalize.unwrap_or(true)),
        ..tei_options(r.truncate, r.truncation_direction)
    };
    let inputs = r.inputs.0.into_iter().map(EmbedInput::Text).collect();
    let out = c.embed_inputs(inputs, r.adapter.as_deref(), opts).await?;
    Ok(with_adapter(Json(out.vectors), r.adapter.as_deref()))
}

/// The pair Hugging Face's `sentence_similarity` sends.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityInputs {
    source_sentence: String,
    sentences: Vec<String>,
}

/// TEI's similarity request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiSimilarity {
    inputs: SimilarityInputs,
    /// Extension: a retrieval adapter's name.
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    prompt_name: Option<Value>,
    /// Hugging Face's generic task parameters: only an empty object is taken.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
}

/// What `POST /` takes: an embed request, or a similarity request.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RootBody {
    Embed(TeiEmbed),
    Similarity(TeiSimilarity),
}

/// What `POST /` answers: vectors for an embed request, scores for a similarity one.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RootAnswer {
    Vectors(Vec<Vec<f32>>),
    Scores(Vec<f32>),
}

/// TEI's root route, as TEI serves it for an embedding model: embeddings for
/// `inputs` of text, similarities for `inputs: {source_sentence, sentences}`
/// (Hugging Face's `InferenceClient(base_url=...)` posts both here)
#[utoipa::path(post, path = "/", tag = "compatible", request_body = RootBody,
    responses((status = 200, description = "One vector per input, or one cosine similarity per sentence", body = RootAnswer),
              (status = "4XX", description = "Invalid input, unknown adapter", body = ErrorBody)))]
pub async fn tei_root(State(c): State<Shared>, ApiJson(v): ApiJson<Value>) -> R {
    if v.get("inputs").is_some_and(Value::is_object) {
        return similarity(c, from_value(v)?).await;
    }
    let r: TeiEmbed = from_value(v)?;
    tei_embed(State(c), ApiJson(r)).await
}

/// TEI-compatible similarity: the cosine of the source sentence with each sentence
#[utoipa::path(post, path = "/similarity", tag = "compatible", request_body = TeiSimilarity,
    responses((status = 200, description = "One cosine similarity per sentence", body = Vec<f32>),
              (status = "4XX", description = "Invalid input, unknown adapter", body = ErrorBody)))]
pub async fn tei_similarity(State(c): State<Shared>, ApiJson(r): ApiJson<TeiSimilarity>) -> R {
    similarity(c, r).await
}

async fn similarity(c: Shared, r: TeiSimilarity) -> R {
    no_prompts(&r.prompt_name)?;
    if let Some(Value::Object(p)) = &r.parameters {
        if let Some(k) = p.keys().next() {
            return Err(Error::invalid(
                format!("parameters.{k}"),
                "not supported for sentence similarity",
            ));
        }
    }
    if r.inputs.sentences.is_empty() {
        return Err(Error::invalid("inputs.sentences", "must not be empty"));
    }
    let opts = tei_options(r.truncate, r.truncation_direction);
    let mut texts = vec![EmbedInput::Text(r.inputs.source_sentence)];
    texts.extend(r.inputs.sentences.into_iter().map(EmbedInput::Text));
    let out = c.embed_inputs(texts, r.adapter.as_deref(), opts).await?;
    let (source, rest) = out.vectors.split_first().expect("the source sentence");
    let scores: Vec<f32> = rest
        .iter()
        .map(|v| v.iter().zip(source).map(|(a, b)| a * b).sum())
        .collect();
    Ok(with_adapter(Json(scores), r.adapter.as_deref()))
}

/// TEI's embed_all request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiEmbedAll {
    #[schema(value_type = StringOrList)]
    inputs: OneOrMany,
    /// Extension: a retrieval adapter's name.
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    prompt_name: Option<Value>,
}

/// TEI-compatible embed_all: every token's vector (special tokens included), not
/// pooled or normalised
#[utoipa::path(post, path = "/embed_all", tag = "compatible", request_body = TeiEmbedAll,
    responses((status = 200, description = "For each input, one vector per token", body = Vec<Vec<Vec<f32>>>),
              (status = "4XX", description = "Invalid input, unknown adapter, too long with truncate false", body = ErrorBody)))]
pub async fn tei_embed_all(State(c): State<Shared>, ApiJson(r): ApiJson<TeiEmbedAll>) -> R {
    no_prompts(&r.prompt_name)?;
    let opts = EmbedOptions {
        normalize: Some(false),
        all_tokens: true,
        ..tei_options(r.truncate, r.truncation_direction)
    };
    let inputs = r.inputs.0.into_iter().map(EmbedInput::Text).collect();
    let out = c.embed_inputs(inputs, r.adapter.as_deref(), opts).await?;
    let d = c.backbone.hidden_size();
    let per_token: Vec<Vec<Vec<f32>>> = out
        .vectors
        .into_iter()
        .map(|flat| flat.chunks(d).map(<[f32]>::to_vec).collect())
        .collect();
    Ok(with_adapter(Json(per_token), r.adapter.as_deref()))
}

/// TEI's rerank request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiRerank {
    query: String,
    texts: Vec<String>,
    /// Extension: the rerank adapter; optional when exactly one is stored.
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    return_text: bool,
    /// The head's logits instead of their sigmoid.
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<Direction>,
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
    responses((status = 200, description = "Best first (TEI's shape; sigmoid scores unless raw_scores)", body = Vec<TeiRank>),
              (status = "4XX", description = "Invalid input, unknown adapter, wrong task", body = ErrorBody)))]
pub async fn tei_rerank(State(c): State<Shared>, ApiJson(r): ApiJson<TeiRerank>) -> R {
    if r.truncate == Some(false) || matches!(r.truncation_direction, Some(Direction::Left)) {
        return Err(Error::invalid(
            "truncate",
            "re-ranking truncates the longer of query and text from its end; truncate false and truncation_direction Left are not supported here",
        ));
    }
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
            score: if r.raw_scores {
                x.score
            } else {
                sigmoid(x.score)
            },
            text: r.return_text.then(|| texts[x.index].clone()),
        })
        .collect();
    Ok(with_adapter(Json(ranks), Some(&name)))
}

/// TEI's tokenize request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiTokenize {
    #[schema(value_type = StringOrList)]
    inputs: OneOrMany,
    /// Include [CLS] and [SEP] (default true).
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    prompt_name: Option<Value>,
}

/// A token of TEI's tokenize answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiToken {
    id: u32,
    text: String,
    special: bool,
    /// Byte offsets in the input (absent for special tokens).
    start: Option<usize>,
    stop: Option<usize>,
}

/// TEI-compatible tokenize
#[utoipa::path(post, path = "/tokenize", tag = "compatible", request_body = TeiTokenize,
    responses((status = 200, description = "The tokens of each input", body = Vec<Vec<TeiToken>>),
              (status = "4XX", description = "Invalid input", body = ErrorBody)))]
pub async fn tei_tokenize(State(c): State<Shared>, ApiJson(r): ApiJson<TeiTokenize>) -> R {
    no_prompts(&r.prompt_name)?;
    if r.inputs.0.is_empty() {
        return Err(Error::invalid("inputs", "must not be empty"));
    }
    let special = r.add_special_tokens.unwrap_or(true);
    let mut out = Vec::new();
    for t in &r.inputs.0 {
        let toks = c.backbone.tokens().tokens_of(t, c.limits.max_length)?;
        out.push(
            toks.into_iter()
                .filter(|t| special || !t.special)
                .map(|t| TeiToken {
                    id: t.id,
                    text: t.text,
                    special: t.special,
                    start: (!t.special).then_some(t.start),
                    stop: (!t.special).then_some(t.stop),
                })
                .collect::<Vec<_>>(),
        );
    }
    Ok(Json(out).into_response())
}

/// TEI's decode request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiDecode {
    /// Token ids, or a list of them.
    #[schema(value_type = Vec<u32>)]
    ids: Value,
    #[serde(default)]
    skip_special_tokens: Option<bool>,
}

/// TEI-compatible decode
#[utoipa::path(post, path = "/decode", tag = "compatible", request_body = TeiDecode,
    responses((status = 200, description = "The text of each id list", body = Vec<String>),
              (status = "4XX", description = "Invalid ids", body = ErrorBody)))]
pub async fn tei_decode(State(c): State<Shared>, ApiJson(r): ApiJson<TeiDecode>) -> R {
    let skip = r.skip_special_tokens.unwrap_or(true);
    let bad = || Error::invalid("ids", "expected token ids or a list of token-id lists");
    let lists: Vec<Vec<u32>> = match &r.ids {
        Value::Array(a) if a.iter().all(Value::is_number) => vec![token_ids(a).ok_or_else(bad)?],
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|l| token_ids(l.as_array().expect("array")).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    let vocab = c.backbone.tokens().vocab_size() as u32;
    let mut out = Vec::new();
    for ids in &lists {
        if let Some(b) = ids.iter().find(|&&i| i >= vocab) {
            return Err(Error::invalid(
                "ids",
                format!("token id {b} is outside the vocabulary (0..{vocab})"),
            ));
        }
        out.push(c.backbone.tokens().decode(ids, skip)?);
    }
    Ok(Json(out).into_response())
}

/// OpenAI's embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiEmbeddings {
    #[schema(value_type = TextsOrTokens)]
    input: OpenAiInput,
    /// The backbone's id (`all-MiniLM-L6-v2`, with or without an organisation),
    /// `base`, or a retrieval adapter's name.
    #[serde(default)]
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    encoding_format: Option<String>,
    /// Only the backbone's own width.
    #[serde(default)]
    dimensions: Option<usize>,
    /// Accepted and not used.
    #[serde(default)]
    user: Option<String>,
}

/// A vector, as floats or as base64 of little-endian f32.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    object: &'static str,
    index: usize,
    embedding: OpenAiVector,
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

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// OpenAI's error body: OpenAI's clients show `error.message`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    message: String,
    /// The kind, as in aside's own `{error, type}`.
    #[serde(rename = "type")]
    kind: String,
    /// The field at fault, when one is.
    param: Option<String>,
    code: Option<String>,
}

fn openai_error(e: Error) -> Response {
    let status = super::error::status(&e);
    let param = match &e {
        Error::InvalidInput { field, .. } if !field.is_empty() => Some(field.clone()),
        Error::UnknownModel { .. } => Some("model".to_owned()),
        _ => None,
    };
    if let Error::Internal(detail) = &e {
        tracing::error!(%detail, "internal error");
    }
    let body = OpenAiError {
        error: OpenAiErrorDetail {
            message: e.message(),
            kind: e.kind().to_owned(),
            param,
            code: None,
        },
    };
    (status, Json(body)).into_response()
}

/// OpenAI-compatible embeddings (model = the backbone's id, `base`, or an adapter
/// name); errors in OpenAI's shape `{error: {message, type, param, code}}`
#[utoipa::path(post, path = "/v1/embeddings", tag = "compatible", request_body = OpenAiEmbeddings,
    responses((status = 200, description = "OpenAI's shape", body = OpenAiEmbeddingList),
              (status = "4XX", description = "Invalid input, unknown model (404 lists the models)", body = OpenAiError)))]
pub async fn openai_embeddings(
    State(c): State<Shared>,
    body: Result<ApiJson<OpenAiEmbeddings>, Error>,
) -> Response {
    let r = match body {
        Ok(ApiJson(r)) => r,
        Err(e) => return openai_error(e),
    };
    openai_embed(c, r).await.unwrap_or_else(openai_error)
}

async fn openai_embed(c: Shared, r: OpenAiEmbeddings) -> R {
    let b64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::invalid(
                "encoding_format",
                format!("`{other}` is not supported (float or base64)"),
            ))
        }
    };
    check_dimensions(&c, "dimensions", r.dimensions)?;
    let _ = r.user;
    let adapter = c.resolve_model(r.model.as_deref(), Task::Retrieval)?;
    let out = c
        .embed_inputs(
            r.input.0,
            adapter.as_deref(),
            EmbedOptions {
                count_tokens: true,
                ..EmbedOptions::default()
            },
        )
        .await?;
    let tokens = out.tokens.expect("counted when asked");
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                OpenAiVector::Base64(base64(&bytes))
            } else {
                OpenAiVector::Float(v)
            },
        })
        .collect();
    let model = r
        .model
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| c.model_id());
    let body = Json(OpenAiEmbeddingList {
        object: "list",
        data,
        model,
        usage: OpenAiUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    });
    Ok(with_adapter(body, adapter.as_deref()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModel {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModelList {
    object: &'static str,
    data: Vec<OpenAiModel>,
}

/// OpenAI-compatible model list: the backbone and every retrieval adapter
#[utoipa::path(get, path = "/v1/models", tag = "compatible",
    responses((status = 200, description = "OpenAI's shape", body = OpenAiModelList)))]
pub async fn openai_models(State(c): State<Shared>) -> Json<OpenAiModelList> {
    let model = |id: String, owned_by: &str| OpenAiModel {
        id,
        object: "model",
        created: 0,
        owned_by: owned_by.into(),
    };
    let mut data = vec![model(c.model_id(), "aside")];
    data.extend(
        c.registry
            .list()
            .into_iter()
            .filter(|i| i.task == "retrieval")
            .map(|i| model(i.name, "aside-adapter")),
    );
    Json(OpenAiModelList {
        object: "list",
        data,
    })
}

/// A Cohere or Jina document: a string or `{text}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object { text: String },
}

impl RerankDocument {
    fn text(&self) -> &str {
        match self {
            RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
        }
    }
}

/// Cohere's and Jina's rerank request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CohereRerank {
    /// A rerank adapter's name; optional when exactly one is stored.
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<RerankDocument>,
    /// Results returned (default all).
    #[serde(default)]
    top_n: Option<usize>,
    /// Include each document (default false).
    #[serde(default)]
    return_documents: Option<bool>,
    /// Refused: documents are scored whole (truncated to the max length).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    max_chunks_per_doc: Option<Value>,
    /// Refused for the same reason.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    max_tokens_per_doc: Option<Value>,
    /// Refused: documents are text.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    rank_fields: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerankDocumentOut {
    text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CohereResult {
    index: usize,
    /// The sigmoid of the rerank head's logit, in (0, 1).
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<RerankDocumentOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CohereRerankResponse {
    id: String,
    results: Vec<CohereResult>,
    model: String,
    #[schema(value_type = Object)]
    meta: Value,
    #[schema(value_type = Object)]
    usage: Value,
}

fn refuse_field(field: &str, v: &Option<Value>, why: &str) -> Result<(), Error> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(Error::invalid(field, why.to_owned())),
    }
}

/// Cohere's and Jina's rerank, over a rerank adapter.
pub async fn cohere_rerank(c: Shared, r: CohereRerank) -> R {
    refuse_field(
        "max_chunks_per_doc",
        &r.max_chunks_per_doc,
        "not supported: each document is scored whole, truncated to the max length",
    )?;
    refuse_field(
        "max_tokens_per_doc",
        &r.max_tokens_per_doc,
        "not supported: each document is scored whole, truncated to the max length",
    )?;
    refuse_field(
        "rank_fields",
        &r.rank_fields,
        "not supported: documents are text",
    )?;
    if r.documents.is_empty() {
        return Err(Error::invalid("documents", "must not be empty"));
    }
    if r.top_n == Some(0) {
        return Err(Error::invalid("top_n", "must be at least 1"));
    }
    let name = match c.resolve_model(r.model.as_deref(), Task::Rerank)? {
        Some(n) => n,
        None => c.only_reranker()?,
    };
    let texts: Vec<String> = r.documents.iter().map(|d| d.text().to_owned()).collect();
    let out = c
        .rerank(RerankRequest {
            query: r.query,
            texts: texts.clone(),
            adapter: name.clone(),
        })
        .await?;
    let keep = r.top_n.unwrap_or(usize::MAX);
    let with_docs = r.return_documents.unwrap_or(false);
    let results = out
        .results
        .into_iter()
        .take(keep)
        .map(|x| CohereResult {
            index: x.index,
            relevance_score: sigmoid(x.score),
            document: with_docs.then(|| RerankDocumentOut {
                text: texts[x.index].clone(),
            }),
        })
        .collect();
    let body = CohereRerankResponse {
        id: out.adapter_version.chars().take(12).collect(),
        results,
        model: name.clone(),
        meta: serde_json::json!({"api_version": {"version": "2"}}),
        usage: serde_json::json!({"search_units": 1}),
    };
    Ok(with_adapter(Json(body), Some(&name)))
}

/// Cohere v2 / Jina rerank
#[utoipa::path(post, path = "/v2/rerank", tag = "compatible", request_body = CohereRerank,
    responses((status = 200, description = "Best first (Cohere's and Jina's shape)", body = CohereRerankResponse),
              (status = "4XX", description = "Invalid input, unknown model, wrong task", body = ErrorBody)))]
pub async fn rerank_v2(State(c): State<Shared>, ApiJson(r): ApiJson<CohereRerank>) -> R {
    cohere_rerank(c, r).await
}
