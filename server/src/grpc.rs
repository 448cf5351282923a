//! The gRPC transport (`proto/aside/v1/aside.proto`). Every RPC is carried out by
//! the HTTP application itself, called in-process: the same validation, keys,
//! limits, metrics, batcher, registry and index, so the two APIs cannot drift.
//! HTTP outcomes become gRPC status codes in one place, [`status_of`].

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use prost_types::value::Kind as PKind;
use serde_json::{json, Value};
use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status, Streaming};
use tower::ServiceExt;

pub mod pb {
    tonic::include_proto!("aside.v1");
    /// The compiled descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aside_descriptor");
}

use pb::*;

/// The HTTP application, reached without a socket.
#[derive(Clone)]
pub struct Core {
    router: axum::Router,
    /// Streamed adapter uploads are refused beyond this many bytes.
    max_upload: usize,
}

impl Core {
    pub fn new(router: axum::Router, max_upload: usize) -> Self {
        Core { router, max_upload }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        meta: &MetadataMap,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Value, Status> {
        Ok(self.call_status(method, path, meta, body).await?.1)
    }

    async fn call_status(
        &self,
        method: Method,
        path: &str,
        meta: &MetadataMap,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Value), Status> {
        let mut req = Request::builder().method(method).uri(path);
        for h in ["authorization", "x-api-key"] {
            if let Some(v) = meta.get(h).and_then(|v| v.to_str().ok()) {
                req = req.header(h, v);
            }
        }
        let req = match body {
            Some((ctype, bytes)) => req.header("content-type", ctype).body(Body::from(bytes)),
            None => req.body(Body::empty()),
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok((status, v))
        } else {
            Err(status_of(status, &v))
        }
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        meta: &MetadataMap,
        body: Value,
    ) -> Result<Value, Status> {
        let bytes = serde_json::to_vec(&body).map_err(|e| Status::internal(e.to_string()))?;
        self.call(method, path, meta, Some(("application/json", bytes)))
            .await
    }
}

/// The one mapping from the HTTP API's outcomes to gRPC codes. The message is the
/// HTTP error's, and its `type` rides along in the `error-type` metadata.
pub fn status_of(status: StatusCode, body: &Value) -> Status {
    let code = match status.as_u16() {
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 if body["error"]
            .as_str()
            .is_some_and(|m| m.contains("already exists")) =>
        {
            Code::AlreadyExists
        }
        409 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 | 408 => Code::DeadlineExceeded,
        501 => Code::Unimplemented,
        _ => Code::Internal,
    };
    let msg = body["error"]
        .as_str()
        .unwrap_or("request failed")
        .to_owned();
    let mut s = Status::new(code, msg);
    if let Some(t) = body["type"].as_str().and_then(|t| t.parse().ok()) {
        s.metadata_mut().insert("error-type", t);
    }
    s
}

/// A path segment, percent-encoded so a name cannot reach another route.
fn seg(s: &str) -> Result<String, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument("a name is required"));
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

pub fn json_to_pvalue(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => PKind::NullValue(0),
        Value::Bool(b) => PKind::BoolValue(*b),
        Value::Number(n) => PKind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => PKind::StringValue(s.clone()),
        Value::Array(a) => PKind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_pvalue).collect(),
        }),
        Value::Object(_) => PKind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_to_struct(v: &Value) -> prost_types::Struct {
    let fields: BTreeMap<String, prost_types::Value> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_pvalue(v)))
                .collect()
        })
        .unwrap_or_default();
    prost_types::Struct { fields }
}

pub fn pvalue_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(PKind::NullValue(_)) => Value::Null,
        Some(PKind::BoolValue(b)) => json!(b),
        Some(PKind::NumberValue(n)) => {
            // Integers stay integers, so metadata filters compare as they do over HTTP.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                json!(*n as i64)
            } else {
                json!(n)
            }
        }
        Some(PKind::StringValue(s)) => json!(s),
        Some(PKind::ListValue(l)) => Value::Array(l.values.iter().map(pvalue_to_json).collect()),
        Some(PKind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), pvalue_to_json(v)))
            .collect(),
    )
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

fn collection(v: &Value) -> Collection {
    Collection {
        name: s(v, "name"),
        adapter: s(v, "adapter"),
        adapter_version: s(v, "adapter_version"),
        count: v["count"].as_u64().unwrap_or(0),
        status: s(v, "status"),
        metric: s(v, "metric"),
        dim: v["dim"].as_u64().unwrap_or(0) as u32,
        details: Some(json_to_struct(v)),
    }
}

fn adapter_info(v: &Value) -> AdapterInfo {
    AdapterInfo {
        name: s(v, "name"),
        version: s(v, "version"),
        kind: s(v, "kind"),
        task: s(v, "task"),
        params: v["params"].as_u64().unwrap_or(0),
        details: Some(json_to_struct(v)),
    }
}

fn items<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = &'a Value> {
    v[k].as_array().into_iter().flatten()
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl inference_server::Inference for Core {
    async fn embed(&self, r: tonic::Request<EmbedRequest>) -> R<EmbedResponse> {
        let (meta, _, req) = r.into_parts();
        let mut body = json!({"inputs": req.inputs});
        if !req.adapter.is_empty() {
            body["adapter"] = json!(req.adapter);
        }
        let v = self.json(Method::POST, "/v1/embed", &meta, body).await?;
        Ok(Response::new(EmbedResponse {
            embeddings: items(&v, "embeddings")
                .map(|e| Embedding {
                    values: e
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                        .collect(),
                })
                .collect(),
            adapter_version: s(&v, "adapter_version"),
        }))
    }

    async fn rerank(&self, r: tonic::Request<RerankRequest>) -> R<RerankResponse> {
        let (meta, _, req) = r.into_parts();
        let body = json!({"query": req.query, "texts": req.texts, "adapter": req.adapter});
        let v = self.json(Method::POST, "/v1/rerank", &meta, body).await?;
        Ok(Response::new(RerankResponse {
            results: items(&v, "results")
                .map(|x| RerankResult {
                    index: x["index"].as_u64().unwrap_or(0) as u32,
                    score: x["score"].as_f64().unwrap_or(0.0) as f32,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl collections_server::Collections for Core {
    async fn create_collection(&self, r: tonic::Request<CreateCollectionRequest>) -> R<Collection> {
        let (meta, _, req) = r.into_parts();
        let mut body = json!({});
        if !req.adapter.is_empty() {
            body["adapter"] = json!(req.adapter);
        }
        if !req.metric.is_empty() {
            body["metric"] = json!(req.metric);
        }
        if let Some(h) = req.hnsw {
            let mut o = serde_json::Map::new();
            for (k, x) in [
                ("m", h.m),
                ("ef_construction", h.ef_construction),
                ("ef", h.ef),
            ] {
                if x > 0 {
                    o.insert(k.into(), json!(x));
                }
            }
            body["hnsw"] = Value::Object(o);
        }
        let path = format!("/v1/collections/{}", seg(&req.name)?);
        let v = self.json(Method::PUT, &path, &meta, body).await?;
        Ok(Response::new(collection(&v)))
    }

    async fn get_collection(&self, r: tonic::Request<CollectionRef>) -> R<Collection> {
        let (meta, _, req) = r.into_parts();
        let path = format!("/v1/collections/{}", seg(&req.name)?);
        let v = self.call(Method::GET, &path, &meta, None).await?;
        Ok(Response::new(collection(&v)))
    }

    async fn list_collections(
        &self,
        r: tonic::Request<ListCollectionsRequest>,
    ) -> R<ListCollectionsResponse> {
        let v = self
            .call(Method::GET, "/v1/collections", r.metadata(), None)
            .await?;
        Ok(Response::new(ListCollectionsResponse {
            collections: items(&v, "collections").map(collection).collect(),
        }))
    }

    async fn delete_collection(&self, r: tonic::Request<CollectionRef>) -> R<DeleteResponse> {
        let (meta, _, req) = r.into_parts();
        let path = format!("/v1/collections/{}", seg(&req.name)?);
        self.call(Method::DELETE, &path, &meta, None).await?;
        Ok(Response::new(DeleteResponse { deleted: true }))
    }

    async fn upsert_documents(
        &self,
        r: tonic::Request<UpsertDocumentsRequest>,
    ) -> R<UpsertDocumentsResponse> {
        let (meta, _, req) = r.into_parts();
        let docs: Vec<Value> = req
            .documents
            .iter()
            .map(|d| {
                let mut o = json!({"id": d.id, "text": d.text});
                if let Some(m) = &d.metadata {
                    o["metadata"] = struct_to_json(m);
                }
                o
            })
            .collect();
        let path = format!("/v1/collections/{}/documents", seg(&req.collection)?);
        let v = self
            .json(Method::POST, &path, &meta, json!({"documents": docs}))
            .await?;
        Ok(Response::new(UpsertDocumentsResponse {
            upserted: v["upserted"].as_u64().unwrap_or(0),
        }))
    }

    async fn get_document(&self, r: tonic::Request<DocumentRef>) -> R<Document> {
        let (meta, _, req) = r.into_parts();
        let path = format!(
            "/v1/collections/{}/documents/{}",
            seg(&req.collection)?,
            seg(&req.id)?
        );
        let v = self.call(Method::GET, &path, &meta, None).await?;
        Ok(Response::new(Document {
            id: s(&v, "id"),
            text: s(&v, "text"),
            metadata: Some(json_to_struct(&v["metadata"])),
        }))
    }

    async fn delete_document(&self, r: tonic::Request<DocumentRef>) -> R<DeleteResponse> {
        let (meta, _, req) = r.into_parts();
        let path = format!(
            "/v1/collections/{}/documents/{}",
            seg(&req.collection)?,
            seg(&req.id)?
        );
        let v = self.call(Method::DELETE, &path, &meta, None).await?;
        Ok(Response::new(DeleteResponse {
            deleted: v["deleted"].as_bool().unwrap_or(true),
        }))
    }

    async fn search(&self, r: tonic::Request<SearchRequest>) -> R<SearchResponse> {
        let (meta, _, req) = r.into_parts();
        let mut body = json!({"query": req.query});
        if req.k > 0 {
            body["k"] = json!(req.k);
        }
        if req.ef > 0 {
            body["ef"] = json!(req.ef);
        }
        if let Some(f) = &req.filter {
            body["filter"] = struct_to_json(f);
        }
        if let Some(rr) = &req.rerank {
            let mut o = json!({"adapter": rr.adapter});
            if rr.candidates > 0 {
                o["candidates"] = json!(rr.candidates);
            }
            if rr.fuse != 0.0 {
                o["fuse"] = json!(rr.fuse);
            }
            body["rerank"] = o;
        }
        let path = format!("/v1/collections/{}/search", seg(&req.collection)?);
        let v = self.json(Method::POST, &path, &meta, body).await?;
        Ok(Response::new(SearchResponse {
            hits: items(&v, "hits")
                .map(|h| Hit {
                    id: s(h, "id"),
                    score: h["score"].as_f64().unwrap_or(0.0) as f32,
                    text: s(h, "text"),
                    metadata: Some(json_to_struct(&h["metadata"])),
                })
                .collect(),
            adapter_version: s(&v, "adapter_version"),
            timings: Some(json_to_struct(&v["timings"])),
        }))
    }
}

#[tonic::async_trait]
impl adapters_server::Adapters for Core {
    async fn upload_adapter(
        &self,
        r: tonic::Request<Streaming<AdapterChunk>>,
    ) -> R<UploadAdapterResponse> {
        let (meta, _, mut stream) = r.into_parts();
        let mut name = String::new();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if name.is_empty() {
                name = chunk.name;
                if name.is_empty() {
                    return Err(Status::invalid_argument(
                        "the first message must name the adapter",
                    ));
                }
            }
            if bytes.len() + chunk.data.len() > self.max_upload {
                return Err(Status::invalid_argument(format!(
                    "the adapter exceeds the upload limit of {} bytes",
                    self.max_upload
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if name.is_empty() {
            return Err(Status::invalid_argument("no message was sent"));
        }
        let path = format!("/v1/adapters/{}", seg(&name)?);
        let (status, v) = self
            .call_status(
                Method::PUT,
                &path,
                &meta,
                Some(("application/octet-stream", bytes)),
            )
            .await?;
        // 201 for a new version, 200 for bytes identical to the current one.
        Ok(Response::new(UploadAdapterResponse {
            created: status == StatusCode::CREATED,
            adapter: Some(adapter_info(&v)),
        }))
    }

    async fn list_adapters(
        &self,
        r: tonic::Request<ListAdaptersRequest>,
    ) -> R<ListAdaptersResponse> {
        let v = self
            .call(Method::GET, "/v1/adapters", r.metadata(), None)
            .await?;
        Ok(Response::new(ListAdaptersResponse {
            adapters: items(&v, "adapters").map(adapter_info).collect(),
        }))
    }

    async fn get_adapter(&self, r: tonic::Request<AdapterRef>) -> R<AdapterInfo> {
        let (meta, _, req) = r.into_parts();
        let path = format!("/v1/adapters/{}", seg(&req.name)?);
        let v = self.call(Method::GET, &path, &meta, None).await?;
        Ok(Response::new(adapter_info(&v)))
    }

    async fn delete_adapter(&self, r: tonic::Request<AdapterRef>) -> R<DeleteResponse> {
        let (meta, _, req) = r.into_parts();
        let path = format!("/v1/adapters/{}", seg(&req.name)?);
        self.call(Method::DELETE, &path, &meta, None).await?;
        Ok(Response::new(DeleteResponse { deleted: true }))
    }
}

#[tonic::async_trait]
impl info_server::Info for Core {
    async fn get_info(&self, r: tonic::Request<InfoRequest>) -> R<InfoResponse> {
        let v = self.call(Method::GET, "/info", r.metadata(), None).await?;
        Ok(Response::new(InfoResponse {
            info: Some(json_to_struct(&v)),
        }))
    }
}

/// Serves the gRPC API (with health and reflection) until `shutdown` completes.
pub async fn serve(
    core: Core,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<inference_server::InferenceServer<Core>>()
        .await;
    reporter
        .set_serving::<collections_server::CollectionsServer<Core>>()
        .await;
    reporter
        .set_serving::<adapters_server::AdaptersServer<Core>>()
        .await;
    reporter
        .set_serving::<info_server::InfoServer<Core>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(inference_server::InferenceServer::new(core.clone()))
        .add_service(collections_server::CollectionsServer::new(core.clone()))
        .add_service(
            adapters_server::AdaptersServer::new(core.clone()).max_decoding_message_size(64 << 20),
        )
        .add_service(info_server::InfoServer::new(core))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
