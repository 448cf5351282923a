//! The gRPC services: each RPC converts its message, calls one core method, and
//! converts the answer (errors through `status.rs`). Keys, limits and metrics are
//! the guard layer's, before any message is read.

use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, given, json_to_struct};
use super::pb::{self, *};
use super::status::status;
use crate::core::types as t;
use crate::core::{Error, Shared};

/// The core behind every aside.v1 service.
#[derive(Clone)]
pub struct Services {
    core: Shared,
}

impl Services {
    pub fn new(core: Shared) -> Self {
        Services { core }
    }
}

type R<T> = Result<Response<T>, Status>;

/// An answer tagged with the adapter it used (the metrics layer labels by it).
fn tagged<T>(msg: T, adapter: Option<&str>) -> Response<T> {
    let mut r = Response::new(msg);
    if let Some(v) = adapter.and_then(|a| a.parse().ok()) {
        r.metadata_mut().insert("x-aside-adapter", v);
    }
    r
}

fn name(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() {
        return Err(status(Error::invalid(field, "is required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl inference_server::Inference for Services {
    async fn embed(&self, r: Request<pb::EmbedRequest>) -> R<EmbedResponse> {
        let r = r.into_inner();
        let adapter = given(r.adapter);
        let out = self
            .core
            .embed(t::EmbedRequest {
                inputs: r.inputs,
                adapter: adapter.clone(),
            })
            .await
            .map_err(status)?;
        let msg = EmbedResponse {
            embeddings: out
                .embeddings
                .into_iter()
                .map(|values| Embedding { values })
                .collect(),
            adapter_version: out.adapter_version.unwrap_or_default(),
        };
        Ok(tagged(msg, adapter.as_deref()))
    }

    async fn rerank(&self, r: Request<pb::RerankRequest>) -> R<RerankResponse> {
        let r = r.into_inner();
        let adapter = r.adapter.clone();
        let out = self
            .core
            .rerank(t::RerankRequest {
                query: r.query,
                texts: r.texts,
                adapter: r.adapter,
            })
            .await
            .map_err(status)?;
        let msg = RerankResponse {
            results: out
                .results
                .into_iter()
                .map(|x| RerankResult {
                    index: x.index as u32,
                    score: x.score,
                })
                .collect(),
            adapter_version: out.adapter_version,
        };
        Ok(tagged(msg, Some(&adapter)))
    }
}

#[tonic::async_trait]
impl collections_server::Collections for Services {
    async fn create_collection(&self, r: Request<CreateCollectionRequest>) -> R<Collection> {
        let r = r.into_inner();
        name("name", &r.name)?;
        let metric = given(r.metric)
            .map(|m| m.parse::<t::Metric>())
            .transpose()
            .map_err(|e| status(Error::invalid("metric", e)))?;
        let store = given(r.store)
            .map(|m| m.parse::<t::Store>())
            .transpose()
            .map_err(|e| status(Error::invalid("store", e)))?;
        let engine = given(r.engine)
            .map(|m| m.parse::<t::Engine>())
            .transpose()
            .map_err(|e| status(Error::invalid("engine", e)))?;
        let lexical = given(r.lexical).map(|l| match l.as_str() {
            "none" => t::LexicalSpec::Off(l),
            _ => t::LexicalSpec::On(t::Lexical { language: l }),
        });
        let out = self
            .core
            .create_collection(
                &r.name,
                t::CreateCollectionRequest {
                    adapter: given(r.adapter),
                    metric,
                    hnsw: r.hnsw.map(convert::hnsw),
                    store,
                    engine,
                    lexical,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::collection(&out)))
    }

    async fn get_collection(&self, r: Request<CollectionRef>) -> R<Collection> {
        let r = r.into_inner();
        name("name", &r.name)?;
        let out = self.core.get_collection(&r.name).await.map_err(status)?;
        Ok(Response::new(convert::collection(&out)))
    }

    async fn list_collections(
        &self,
        _: Request<ListCollectionsRequest>,
    ) -> R<ListCollectionsResponse> {
        let out = self.core.list_collections().await.map_err(status)?;
        Ok(Response::new(ListCollectionsResponse {
            collections: out.collections.iter().map(convert::collection).collect(),
        }))
    }

    async fn delete_collection(&self, r: Request<CollectionRef>) -> R<DeleteResponse> {
        let r = r.into_inner();
        name("name", &r.name)?;
        self.core.delete_collection(&r.name).await.map_err(status)?;
        Ok(Response::new(DeleteResponse { deleted: true }))
    }

    async fn upsert_documents(
        &self,
        r: Request<UpsertDocumentsRequest>,
    ) -> R<UpsertDocumentsResponse> {
        let r = r.into_inner();
        name("collection", &r.collection)?;
        let documents = r
            .documents
            .into_iter()
            .map(|d| t::NewDocument {
                id: d.id,
                text: d.text,
                metadata: d.metadata.as_ref().map(convert::struct_to_json),
            })
            .collect();
        let out = self
            .core
            .upsert(&r.collection, t::UpsertRequest { documents })
            .await
            .map_err(status)?;
        Ok(Response::new(UpsertDocumentsResponse {
            upserted: out.upserted as u64,
        }))
    }

    async fn get_document(&self, r: Request<DocumentRef>) -> R<Document> {
        let r = r.into_inner();
        name("collection", &r.collection)?;
        let d = self
            .core
            .get_document(&r.collection, &r.id)
            .await
            .map_err(status)?;
        Ok(Response::new(Document {
            id: d.id,
            text: d.text,
            metadata: Some(json_to_struct(&d.metadata)),
        }))
    }

    async fn delete_document(&self, r: Request<DocumentRef>) -> R<DeleteResponse> {
        let r = r.into_inner();
        name("collection", &r.collection)?;
        self.core
            .delete_document(&r.collection, &r.id)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteResponse { deleted: true }))
    }

    async fn search(&self, r: Request<SearchRequest>) -> R<SearchResponse> {
        let mut r = r.into_inner();
        name("collection", &r.collection)?;
        let collection = std::mem::take(&mut r.collection);
        let out = self
            .core
            .search(&collection, convert::search(r).map_err(status)?)
            .await
            .map_err(status)?;
        let label = self.core.collection_adapter(&collection);
        let msg = SearchResponse {
            timings: Some(json_to_struct(
                &serde_json::to_value(&out.timings).unwrap_or_default(),
            )),
            hits: out.hits.into_iter().map(convert::hit).collect(),
            adapter_version: out.adapter_version.unwrap_or_default(),
        };
        Ok(tagged(msg, label.as_deref()))
    }
}

#[tonic::async_trait]
impl adapters_server::Adapters for Services {
    async fn upload_adapter(
        &self,
        r: Request<Streaming<AdapterChunk>>,
    ) -> R<UploadAdapterResponse> {
        let mut stream = r.into_inner();
        let limit = self.core.limits.adapter_body_limit;
        let mut name = String::new();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if name.is_empty() {
                name = chunk.name;
                if name.is_empty() {
                    return Err(status(Error::invalid(
                        "name",
                        "the first message must name the adapter",
                    )));
                }
            }
            if bytes.len() + chunk.data.len() > limit {
                return Err(status(Error::too_large(format!(
                    "the adapter exceeds the upload limit of {limit} bytes"
                ))));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if name.is_empty() {
            return Err(status(Error::invalid("name", "no message was sent")));
        }
        let out = self
            .core
            .put_adapter(&name, t::AdapterUpload::Native(bytes))
            .await
            .map_err(status)?;
        let msg = UploadAdapterResponse {
            created: out.created,
            adapter: Some(convert::adapter_info(&out.info, Vec::new())),
        };
        Ok(tagged(msg, Some(&name)))
    }

    async fn list_adapters(&self, _: Request<ListAdaptersRequest>) -> R<ListAdaptersResponse> {
        let out = self.core.list_adapters();
        Ok(Response::new(ListAdaptersResponse {
            adapters: out
                .adapters
                .iter()
                .map(|a| convert::adapter_info(a, Vec::new()))
                .collect(),
        }))
    }

    async fn get_adapter(&self, r: Request<AdapterRef>) -> R<AdapterInfo> {
        let r = r.into_inner();
        name("name", &r.name)?;
        let out = self.core.get_adapter(&r.name).map_err(status)?;
        Ok(tagged(
            convert::adapter_info(&out.current, out.versions),
            Some(&r.name),
        ))
    }

    async fn delete_adapter(&self, r: Request<AdapterRef>) -> R<DeleteResponse> {
        let r = r.into_inner();
        name("name", &r.name)?;
        self.core.delete_adapter(&r.name).await.map_err(status)?;
        Ok(tagged(DeleteResponse { deleted: true }, Some(&r.name)))
    }
}

#[tonic::async_trait]
impl info_server::Info for Services {
    async fn get_info(&self, _: Request<InfoRequest>) -> R<InfoResponse> {
        let info = serde_json::to_value(self.core.info()).unwrap_or_default();
        Ok(Response::new(InfoResponse {
            info: Some(json_to_struct(&info)),
        }))
    }
}
