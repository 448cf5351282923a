//! `/openapi.json` (OpenAPI 3.1, written by hand to match the routes in `mod.rs`) and
//! a small `/docs` page that lists it.

use axum::response::Html;
use axum::Json;
use serde_json::{json, Value};

fn op(summary: &str, body: Option<Value>) -> Value {
    let mut o = json!({"summary": summary, "responses": {"200": {"description": "OK"},
        "4XX": {"description": "`{error, type}`", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}});
    if let Some(b) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": b}}});
    }
    o
}

pub fn document() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "aside", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Many retrieval tasks on one frozen backbone, each a small adapter."},
        "paths": {
            "/v1/adapters": {"get": op("List adapters (current versions) and cache counters", None)},
            "/v1/adapters/{name}": {
                "put": {"summary": "Upload an adapter: the native .safetensors file as the body, or a PEFT folder as multipart (adapter_config.json, adapter_model.safetensors). 201 new version, 200 identical bytes.",
                        "requestBody": {"content": {"application/octet-stream": {}, "multipart/form-data": {}}},
                        "responses": {"201": {"description": "created"}, "200": {"description": "unchanged"}}},
                "get": op("Describe an adapter and list its versions", None),
                "delete": op("Delete an adapter and all its versions (409 while a collection uses it)", None)},
            "/v1/embed": {"post": op("Embed texts", Some(json!({"type": "object", "required": ["inputs"],
                "properties": {"inputs": strings, "adapter": {"type": "string"}}})))},
            "/v1/rerank": {"post": op("Score texts against a query with a rerank adapter", Some(json!({"type": "object",
                "required": ["query", "texts", "adapter"], "properties": {"query": {"type": "string"}, "texts": strings, "adapter": {"type": "string"}}})))},
            "/embed": {"post": op("TEI-compatible embed", Some(json!({"type": "object", "properties": {"inputs": {}, "normalize": {"type": "boolean"}, "adapter": {"type": "string"}}})))},
            "/rerank": {"post": op("TEI-compatible rerank", Some(json!({"type": "object", "properties": {"query": {"type": "string"}, "texts": strings, "return_text": {"type": "boolean"}, "adapter": {"type": "string"}}})))},
            "/v1/embeddings": {"post": op("OpenAI-compatible embeddings (model = adapter name, or `base`)", Some(json!({"type": "object", "properties": {"input": {}, "model": {"type": "string"}}})))},
            "/v1/collections": {"get": op("List collections", None)},
            "/v1/collections/{name}": {
                "put": op("Create a collection", Some(json!({"type": "object", "properties": {"adapter": {"type": "string"},
                    "metric": {"enum": ["cosine", "dot", "l2"]}, "hnsw": {"type": "object", "properties": {"m": {"type": "integer"}, "ef_construction": {"type": "integer"}, "ef": {"type": "integer"}}}}}))),
                "get": op("Describe a collection (count, status, re-embedding progress)", None),
                "delete": op("Delete a collection", None)},
            "/v1/collections/{name}/documents": {"post": op("Upsert documents (embedded with the collection's adapter; durable on return)",
                Some(json!({"type": "object", "required": ["documents"], "properties": {"documents": {"type": "array", "items": {"type": "object",
                "required": ["id", "text"], "properties": {"id": {"type": "string"}, "text": {"type": "string"}, "metadata": {"type": "object"}}}}}})))},
            "/v1/collections/{name}/documents/{id}": {"get": op("Get a document", None), "delete": op("Delete a document", None)},
            "/v1/collections/{name}/search": {"post": op("Search, optionally re-ranking the candidates", Some(json!({"type": "object", "required": ["query"],
                "properties": {"query": {"type": "string"}, "k": {"type": "integer", "default": 10}, "ef": {"type": "integer"}, "filter": {"type": "object"},
                "threshold": {"type": "number"}, "exact": {"type": "boolean"},
                "rerank": {"type": "object", "properties": {"adapter": {"type": "string"}, "candidates": {"type": "integer", "default": 100}, "fuse": {"type": "number", "default": 0, "description": "score = head + fuse × retrieval score"}}}}})))},
            "/health": {"get": op("Liveness", None)},
            "/ready": {"get": op("Readiness", None)},
            "/metrics": {"get": op("Prometheus metrics", None)},
            "/info": {"get": op("Model and server facts", None)},
        },
        "components": {"schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}, "type": {"type": "string"}}}}}
    })
}

pub async fn spec() -> Json<Value> {
    Json(document())
}

pub async fn docs() -> Html<String> {
    let doc = document();
    let mut rows = String::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, o) in ops.as_object().expect("ops") {
            rows.push_str(&format!(
                "<tr><td><code>{}</code></td><td><code>{path}</code></td><td>{}</td></tr>",
                method.to_uppercase(),
                o["summary"].as_str().unwrap_or("")
            ));
        }
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>aside API</title></head><body>\
         <h1>aside API</h1><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p>\
         <table border=1 cellpadding=4>{rows}</table></body></html>"
    ))
}
