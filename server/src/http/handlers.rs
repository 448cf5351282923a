//! The HTTP handlers of aside's own API: each decodes its request, calls one core
//! method, and encodes the answer (errors through `error.rs`). The `#[utoipa::path]`
//! attributes are the OpenAPI document's operations.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::json::{from_value, optional_body, ApiJson};
use crate::core::types::*;
use crate::core::{Error, Shared};

type R<T> = Result<T, Error>;

/// Tags a response with the adapter it used (the metrics layer labels by it).
pub fn with_adapter(body: impl IntoResponse, adapter: Option<&str>) -> Response {
    match adapter {
        Some(a) => ([("x-aside-adapter", a.to_owned())], body).into_response(),
        None => body.into_response(),
    }
}

/// Embed texts
#[utoipa::path(post, path = "/v1/embed", tag = "inference", request_body = EmbedRequest,
    responses((status = 200, description = "One vector per input", body = EmbedResponse),
              (status = "4XX", description = "Invalid input, unknown adapter, wrong task, too many inputs", body = ErrorBody)))]
pub async fn embed(State(c): State<Shared>, ApiJson(r): ApiJson<EmbedRequest>) -> R<Response> {
    let adapter = r.adapter.clone();
    let out = c.embed(r).await?;
    Ok(with_adapter(Json(out), adapter.as_deref()))
}

/// Score texts against a query with a rerank adapter: aside's shape (`texts`,
/// `adapter`) or Cohere's and Jina's (`documents`, `model`, `top_n`, `return_documents`)
#[utoipa::path(post, path = "/v1/rerank", tag = "inference",
    request_body(content = RerankBody, description = "aside's shape, or Cohere's and Jina's (told apart by `documents`)"),
    responses((status = 200, description = "Scores, best first: aside's shape (RerankResponse) or Cohere's (CohereRerankResponse)", body = RerankAnswer),
              (status = "4XX", description = "Invalid input, unknown adapter, wrong task", body = ErrorBody)))]
pub async fn rerank(
    State(c): State<Shared>,
    ApiJson(v): ApiJson<serde_json::Value>,
) -> R<Response> {
    if v.get("documents").is_some() {
        return super::compat::cohere_rerank(c, from_value(v)?).await;
    }
    let r: RerankRequest = from_value(v)?;
    let adapter = r.adapter.clone();
    let out = c.rerank(r).await?;
    Ok(with_adapter(Json(out), Some(&adapter)))
}

/// The two request shapes `/v1/rerank` takes.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RerankBody {
    Aside(RerankRequest),
    Cohere(super::compat::CohereRerank),
}

/// The answer of `/v1/rerank`, in the shape of its request.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RerankAnswer {
    Aside(RerankResponse),
    Cohere(super::compat::CohereRerankResponse),
}

/// Reads a PEFT folder sent as multipart parts named `adapter_config.json` and
/// `adapter_model.safetensors` (by part name or file name).
async fn peft_parts(mut mp: Multipart) -> R<AdapterUpload> {
    let (mut config, mut weights) = (None, None);
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| Error::invalid("multipart", e.to_string()))?
    {
        let name = field
            .file_name()
            .or(field.name())
            .unwrap_or_default()
            .to_owned();
        let data = field
            .bytes()
            .await
            .map_err(|e| Error::invalid(format!("multipart part `{name}`"), e.to_string()))?;
        match name.as_str() {
            "adapter_config.json" => config = Some(data.to_vec()),
            "adapter_model.safetensors" => weights = Some(data.to_vec()),
            other => {
                return Err(Error::invalid(
                    "multipart",
                    format!("unexpected part `{other}` (send adapter_config.json and adapter_model.safetensors)"),
                ))
            }
        }
    }
    match (config, weights) {
        (Some(config), Some(weights)) => Ok(AdapterUpload::Peft { config, weights }),
        _ => Err(Error::invalid(
            "multipart",
            "a PEFT upload needs both adapter_config.json and adapter_model.safetensors",
        )),
    }
}

/// Upload an adapter: the native .safetensors file as the body, or a PEFT folder as multipart. 201 new version, 200 identical bytes.
#[utoipa::path(put, path = "/v1/adapters/{name}", tag = "adapters",
    params(("name" = String, Path, description = "1-64 of letters, digits, '.', '_', '-'")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The native .safetensors file, or (multipart/form-data) a PEFT folder's adapter_config.json and adapter_model.safetensors"),
    responses((status = 201, description = "A new current version", body = AdapterInfo),
              (status = 200, description = "Identical bytes were already current", body = AdapterInfo),
              (status = "4XX", description = "An invalid file (the first fault named), a bad name, too large", body = ErrorBody)))]
pub async fn put_adapter(
    State(c): State<Shared>,
    Path(name): Path<String>,
    req: Request,
) -> R<Response> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let upload = if multipart {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| Error::invalid("multipart", e.body_text()))?;
        peft_parts(mp).await?
    } else {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::too_large(e.body_text()),
                _ => Error::invalid("", e.body_text()),
            })?;
        AdapterUpload::Native(body.to_vec())
    };
    let out = c.put_adapter(&name, upload).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [("x-aside-adapter", name)], Json(out.info)).into_response())
}

/// List adapters (current versions) and cache counters
#[utoipa::path(get, path = "/v1/adapters", tag = "adapters",
    responses((status = 200, description = "Current versions and cache counters", body = AdapterList)))]
pub async fn list_adapters(State(c): State<Shared>) -> Json<AdapterList> {
    Json(c.list_adapters())
}

/// Describe an adapter and list its versions
#[utoipa::path(get, path = "/v1/adapters/{name}", tag = "adapters",
    params(("name" = String, Path, description = "The adapter's name")),
    responses((status = 200, description = "The current version and every stored version", body = AdapterDetails),
              (status = 404, description = "No such adapter", body = ErrorBody)))]
pub async fn get_adapter(State(c): State<Shared>, Path(name): Path<String>) -> R<Response> {
    let out = c.get_adapter(&name)?;
    Ok(with_adapter(Json(out), Some(&name)))
}

/// Delete an adapter and all its versions (409 while a collection uses it)
#[utoipa::path(delete, path = "/v1/adapters/{name}", tag = "adapters",
    params(("name" = String, Path, description = "The adapter's name")),
    responses((status = 200, description = "Deleted with all its versions", body = AdapterDeleted),
              (status = 404, description = "No such adapter", body = ErrorBody),
              (status = 409, description = "A collection uses it", body = ErrorBody)))]
pub async fn delete_adapter(State(c): State<Shared>, Path(name): Path<String>) -> R<Response> {
    let out = c.delete_adapter(&name).await?;
    Ok(with_adapter(Json(out), Some(&name)))
}

/// List collections
#[utoipa::path(get, path = "/v1/collections", tag = "collections",
    responses((status = 200, description = "Every collection", body = CollectionList)))]
pub async fn list_collections(State(c): State<Shared>) -> R<Json<CollectionList>> {
    Ok(Json(c.list_collections().await?))
}

/// Create a collection
#[utoipa::path(put, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "1-64 of letters, digits, '.', '_', '-'")),
    request_body(content = Option<CreateCollectionRequest>, description = "Optional: none means the bare backbone, cosine, default HNSW settings"),
    responses((status = 201, description = "Created", body = CollectionInfo),
              (status = "4XX", description = "Invalid settings, unknown adapter, or the name exists (409)", body = ErrorBody)))]
pub async fn create_collection(
    State(c): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> R<Response> {
    let r: CreateCollectionRequest = optional_body(&body)?;
    let out = c.create_collection(&name, r).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Describe a collection (count, status, re-embedding progress)
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 200, description = "Count, status, re-embedding progress", body = CollectionInfo),
              (status = 404, description = "No such collection", body = ErrorBody)))]
pub async fn get_collection(
    State(c): State<Shared>,
    Path(name): Path<String>,
) -> R<Json<CollectionInfo>> {
    Ok(Json(c.get_collection(&name).await?))
}

/// Delete a collection
#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 200, description = "Deleted", body = Deleted),
              (status = 404, description = "No such collection", body = ErrorBody),
              (status = 409, description = "Being re-embedded", body = ErrorBody)))]
pub async fn delete_collection(
    State(c): State<Shared>,
    Path(name): Path<String>,
) -> R<Json<Deleted>> {
    Ok(Json(c.delete_collection(&name).await?))
}

/// Upsert documents (embedded with the collection's adapter; durable on return)
#[utoipa::path(post, path = "/v1/collections/{name}/documents", tag = "collections",
    params(("name" = String, Path, description = "The collection's name")),
    request_body = UpsertRequest,
    responses((status = 200, description = "Embedded with the collection's adapter version; durable on return", body = UpsertResponse),
              (status = "4XX", description = "Invalid documents, unknown collection, re-embedding (409), too many (413)", body = ErrorBody)))]
pub async fn upsert(
    State(c): State<Shared>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<UpsertRequest>,
) -> R<Json<UpsertResponse>> {
    Ok(Json(c.upsert(&name, r).await?))
}

/// Get a document
#[utoipa::path(get, path = "/v1/collections/{name}/documents/{id}", tag = "collections",
    params(("name" = String, Path, description = "The collection's name"),
           ("id" = String, Path, description = "The document's id")),
    responses((status = 200, description = "The document", body = Document),
              (status = 404, description = "No such collection or document", body = ErrorBody)))]
pub async fn get_document(
    State(c): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> R<Json<Document>> {
    Ok(Json(c.get_document(&name, &id).await?))
}

/// Delete a document
#[utoipa::path(delete, path = "/v1/collections/{name}/documents/{id}", tag = "collections",
    params(("name" = String, Path, description = "The collection's name"),
           ("id" = String, Path, description = "The document's id")),
    responses((status = 200, description = "Deleted (durable on return)", body = Deleted),
              (status = "4XX", description = "No such collection or document, or re-embedding (409)", body = ErrorBody)))]
pub async fn delete_document(
    State(c): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> R<Json<Deleted>> {
    Ok(Json(c.delete_document(&name, &id).await?))
}

/// Search, optionally re-ranking the candidates
#[utoipa::path(post, path = "/v1/collections/{name}/search", tag = "collections",
    params(("name" = String, Path, description = "The collection's name")),
    request_body = SearchRequest,
    responses((status = 200, description = "Hits, best first", body = SearchResponse),
              (status = "4XX", description = "Invalid search, unknown collection or rerank adapter", body = ErrorBody)))]
pub async fn search(
    State(c): State<Shared>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<SearchRequest>,
) -> R<Response> {
    let out = c.search(&name, r).await?;
    let label = c.collection_adapter(&name);
    Ok(with_adapter(Json(out), label.as_deref()))
}

/// Liveness
#[utoipa::path(get, path = "/health", tag = "server",
    responses((status = 200, description = "The process is up", body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
        damaged: Default::default(),
        store: None,
    })
}

/// Readiness: 503 while a collection has lost data or could not be opened
#[utoipa::path(get, path = "/ready", tag = "server",
    responses((status = 200, description = "The model is loaded and every collection is whole", body = Status),
              (status = 503, description = "A collection lost data (corrupt log records skipped) or could not be opened: `damaged` says which and what", body = Status)))]
pub async fn ready(State(c): State<Shared>) -> Response {
    let damaged = c.damaged();
    let store = c.stores.unreachable().await;
    let status = match (damaged.is_empty(), &store) {
        (true, None) => {
            return Json(Status {
                status: "ready".into(),
                damaged,
                store,
            })
            .into_response()
        }
        (false, _) => "damaged",
        (true, Some(_)) => "store_unavailable",
    };
    let body = Status {
        status: status.into(),
        damaged,
        store,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Model and server facts
#[utoipa::path(get, path = "/info", tag = "server",
    responses((status = 200, description = "Model and server facts", body = Info)))]
pub async fn info(State(c): State<Shared>) -> Json<Info> {
    Json(c.info())
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(c): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics_text(),
    )
        .into_response()
}
