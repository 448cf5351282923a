//! `/openapi.json`, generated from the request and response types and the
//! handlers' `#[utoipa::path]` attributes (so it cannot drift from the routes),
//! and a small `/docs` page that lists it.

use axum::response::Html;
use axum::Json;
use utoipa::OpenApi;

use super::{compat, handlers};
use crate::core::types::*;

#[derive(OpenApi)]
#[openapi(
    info(title = "aside", description = "Many retrieval tasks on one frozen backbone, each a small adapter. Every error is `{error, type}`."),
    paths(
        handlers::list_adapters, handlers::put_adapter, handlers::get_adapter, handlers::delete_adapter,
        handlers::embed, handlers::rerank,
        compat::tei_root, compat::tei_embed, compat::tei_embed_all, compat::tei_similarity, compat::tei_rerank, compat::tei_tokenize,
        compat::tei_decode, compat::openai_embeddings, compat::openai_models, compat::rerank_v2,
        handlers::list_collections, handlers::create_collection, handlers::get_collection,
        handlers::delete_collection, handlers::upsert, handlers::get_document,
        handlers::delete_document, handlers::search,
        handlers::health, handlers::ready, handlers::metrics, handlers::info,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "inference", description = "Embedding and re-ranking"),
        (name = "adapters", description = "Upload, list, describe, delete adapters"),
        (name = "collections", description = "Collections, documents and search"),
        (name = "compatible", description = "The request shapes of TEI, OpenAI, Cohere and Jina clients"),
        (name = "server", description = "Health, readiness, metrics, facts"),
    )
)]
struct ApiDoc;

/// The OpenAPI 3.1 document.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    doc["info"]["version"] = env!("CARGO_PKG_VERSION").into();
    // The upload also takes a PEFT folder as multipart parts.
    let upload = &mut doc["paths"]["/v1/adapters/{name}"]["put"]["requestBody"]["content"];
    upload["multipart/form-data"] = serde_json::json!({"schema": {
        "type": "object",
        "properties": {
            "adapter_config.json": {"type": "string", "format": "binary"},
            "adapter_model.safetensors": {"type": "string", "format": "binary"}
        },
        "required": ["adapter_config.json", "adapter_model.safetensors"]
    }});
    doc
}

pub async fn spec() -> Json<serde_json::Value> {
    Json(document())
}

pub async fn docs() -> Html<String> {
    let doc = document();
    let mut rows = String::new();
    for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
        for (method, o) in ops.as_object().into_iter().flatten() {
            let text = o["summary"]
                .as_str()
                .or(o["description"].as_str())
                .unwrap_or("");
            rows.push_str(&format!(
                "<tr><td><code>{}</code></td><td><code>{path}</code></td><td>{}</td></tr>",
                method.to_uppercase(),
                text
            ));
        }
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>aside API</title></head><body>\
         <h1>aside API</h1><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p>\
         <table>{rows}</table></body></html>"
    ))
}
