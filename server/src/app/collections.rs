//! `/v1/collections`: create, describe, list, delete; documents (embedded with the
//! collection's adapter version, durable on return); search with optional
//! re-ranking; and the background re-embedding that follows an adapter swap.

use std::sync::Arc;
use std::time::Instant;

use aside_adapters::{Adapter, Task};
use aside_index::{
    Collection, CollectionConfig, Doc, Filter, HnswParams, Metric, SearchRequest, Space,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::batcher::Text;
use super::error::ApiError;
use super::inference::{adapter_for, score_pairs};
use super::{blocking, ApiJson, Reembed, Shared};

/// The adapter version a collection's vectors were made with, pinned.
fn pinned(s: &Shared, space: &Space) -> Result<Option<Arc<Adapter>>, ApiError> {
    match (&space.adapter, &space.adapter_version) {
        (Some(n), Some(v)) => Ok(Some(s.registry.get_version(n, v)?)),
        _ => Ok(None),
    }
}

/// `reembedding` while a job still has a version to switch to, else `ready`.
fn status(cfg: &CollectionConfig, job: Option<&Reembed>) -> &'static str {
    match job {
        Some(j)
            if j.error.is_none()
                && cfg.space.adapter_version.as_deref() != Some(j.target_version.as_str()) =>
        {
            "reembedding"
        }
        _ => "ready",
    }
}

fn describe(s: &Shared, c: &Collection) -> serde_json::Value {
    let cfg = c.config();
    let st = c.stats();
    let job = s.reembeds.lock().get(&cfg.name).cloned();
    serde_json::json!({
        "name": cfg.name,
        "adapter": cfg.space.adapter,
        "adapter_version": cfg.space.adapter_version,
        "backbone": cfg.space.backbone,
        "dim": cfg.dim,
        "metric": cfg.metric,
        "hnsw": cfg.hnsw,
        "count": st.count,
        "tombstones": st.tombstones,
        "unindexed": st.unindexed,
        "status": status(&cfg, job.as_ref()),
        "reembed": job,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    metric: Option<Metric>,
    #[serde(default)]
    hnsw: Option<HnswParams>,
}

pub async fn create(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: none means the bare backbone and default settings.
    let r: CreateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CreateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let (adapter, version) = match &r.adapter {
        Some(n) => (
            Some(n.clone()),
            Some(adapter_for(&s, n, Task::Retrieval)?.0.version),
        ),
        None => (None, None),
    };
    let config = CollectionConfig {
        name: name.clone(),
        dim: s.backbone.hidden_size(),
        metric: r.metric.unwrap_or_default(),
        hnsw: r.hnsw.unwrap_or_default(),
        space: Space {
            backbone: s.backbone.sha256().to_owned(),
            adapter,
            adapter_version: version,
        },
    };
    let index = s.index.clone();
    let c = blocking(move || Ok(index.create(config)?)).await?;
    Ok((StatusCode::CREATED, Json(describe(&s, &c))).into_response())
}

pub async fn get_one(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = s.index.get(&name)?;
    Ok(Json(describe(&s, &c)))
}

pub async fn list(State(s): State<Shared>) -> Json<serde_json::Value> {
    let all: Vec<serde_json::Value> = s.index.list().iter().map(|c| describe(&s, c)).collect();
    Json(serde_json::json!({"collections": all}))
}

fn not_reembedding(s: &Shared, name: &str) -> Result<(), ApiError> {
    let cfg = s.index.get(name)?.config();
    if let Some(j) = s.reembeds.lock().get(name) {
        if status(&cfg, Some(j)) == "reembedding" {
            return Err(ApiError::Conflict(format!(
                "collection `{name}` is being re-embedded with adapter version {} ({}/{} done); retry when its status is ready",
                j.target_version, j.done, j.total
            )));
        }
    }
    Ok(())
}

pub async fn delete_one(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    not_reembedding(&s, &name)?;
    let index = s.index.clone();
    let n = name.clone();
    blocking(move || Ok(index.delete(&n)?)).await?;
    Ok(Json(serde_json::json!({"deleted": name})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDoc {
    id: String,
    text: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    documents: Vec<NewDoc>,
}

pub async fn upsert(
    State(s): State<Shared>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<UpsertRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = s.index.get(&name)?;
    not_reembedding(&s, &name)?;
    if r.documents.is_empty() {
        return Err(ApiError::BadRequest("`documents` is empty".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &r.documents {
        if !seen.insert(d.id.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "document id `{}` appears more than once",
                d.id
            )));
        }
        if let Some(m) = &d.metadata {
            if !m.is_object() {
                return Err(ApiError::BadRequest(format!(
                    "document `{}`: metadata must be an object",
                    d.id
                )));
            }
        }
    }
    let space = c.config().space;
    let adapter = pinned(&s, &space)?;
    let texts = r
        .documents
        .iter()
        .map(|d| Text::Single(d.text.clone()))
        .collect();
    let vectors = s.embed(texts, adapter).await?;
    let docs: Vec<Doc> = r
        .documents
        .into_iter()
        .zip(vectors)
        .map(|(d, vector)| Doc {
            id: d.id,
            vector,
            text: d.text,
            metadata: d.metadata.unwrap_or_else(|| serde_json::json!({})),
        })
        .collect();
    let n = blocking(move || Ok(c.upsert(docs)?)).await?;
    Ok(Json(serde_json::json!({"upserted": n})))
}

pub async fn delete_document(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = s.index.get(&name)?;
    not_reembedding(&s, &name)?;
    let i = id.clone();
    let n = blocking(move || Ok(c.delete(&[i])?)).await?;
    if n == 0 {
        return Err(ApiError::NotFound(format!(
            "no document `{id}` in collection `{name}`"
        )));
    }
    Ok(Json(serde_json::json!({"deleted": id})))
}

pub async fn get_document(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = s.index.get(&name)?;
    let d = c
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no document `{id}` in collection `{name}`")))?;
    Ok(Json(
        serde_json::json!({"id": d.id, "text": d.text, "metadata": d.metadata}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankSpec {
    adapter: String,
    #[serde(default)]
    candidates: Option<usize>,
    /// Score = head + fuse × the retrieval score (0: the head alone).
    #[serde(default)]
    fuse: Option<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    query: String,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    ef: Option<usize>,
    #[serde(default)]
    filter: Option<serde_json::Value>,
    #[serde(default)]
    threshold: Option<f32>,
    #[serde(default)]
    exact: bool,
    #[serde(default)]
    rerank: Option<RerankSpec>,
}

pub async fn search(
    State(s): State<Shared>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<SearchBody>,
) -> Result<Response, ApiError> {
    let c = s.index.get(&name)?;
    let k = r.k.unwrap_or(10);
    if k == 0 || k > 1000 {
        return Err(ApiError::BadRequest(format!(
            "k {k} is out of range 1..=1000"
        )));
    }
    let filter = r.filter.as_ref().map(Filter::parse).transpose()?;
    let reranker = match &r.rerank {
        Some(spec) => Some(adapter_for(&s, &spec.adapter, Task::Rerank)?),
        None => None,
    };
    let candidates = r
        .rerank
        .as_ref()
        .map_or(k, |x| x.candidates.unwrap_or(100).max(k));
    if candidates > 1000 {
        return Err(ApiError::BadRequest(format!(
            "rerank.candidates {candidates} is out of range 1..=1000"
        )));
    }
    let fuse = r.rerank.as_ref().and_then(|x| x.fuse).unwrap_or(0.0);
    if !fuse.is_finite() || fuse < 0.0 {
        return Err(ApiError::BadRequest(format!(
            "rerank.fuse {fuse} must be a finite number >= 0"
        )));
    }
    // The query is embedded with exactly the version the collection's vectors use.
    let cfg = c.config();
    let adapter = pinned(&s, &cfg.space)?;
    let t0 = Instant::now();
    let q = s
        .embed(vec![Text::Single(r.query.clone())], adapter)
        .await?
        .remove(0);
    let embed_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let (ef, threshold, exact) = (r.ef, r.threshold, r.exact);
    let mut hits = blocking(move || {
        Ok(c.search(&SearchRequest {
            vector: &q,
            k: candidates,
            ef,
            filter: filter.as_ref(),
            threshold,
            exact,
        })?)
    })
    .await?;
    let search_ms = t1.elapsed().as_secs_f64() * 1e3;
    let mut rerank_ms = None;
    if let Some((_, a)) = reranker {
        let t2 = Instant::now();
        let texts: Vec<String> = hits.iter().map(|h| h.text.clone()).collect();
        let scores = score_pairs(&s, a, &r.query, &texts).await?;
        for (h, sc) in hits.iter_mut().zip(scores) {
            h.score = sc + fuse * h.score;
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        rerank_ms = Some(t2.elapsed().as_secs_f64() * 1e3);
    }
    hits.truncate(k);
    let body = serde_json::json!({
        "hits": hits,
        "adapter_version": cfg.space.adapter_version,
        "timings": {"embed_ms": embed_ms, "search_ms": search_ms, "rerank_ms": rerank_ms},
    });
    let label = cfg.space.adapter.unwrap_or_default();
    Ok(([("x-aside-adapter", label)], Json(body)).into_response())
}

/// Starts re-embedding every collection that uses `adapter` at an older version.
pub fn start_reembeds(s: &Shared, adapter: &str) {
    for c in s.index.list() {
        let cfg = c.config();
        if cfg.space.adapter.as_deref() == Some(adapter) {
            start_reembed(s, &cfg.name);
        }
    }
}

/// Starts (unless running) the re-embedding of one collection into its adapter's
/// current version. Searches keep the old vectors and version until the switch.
pub fn start_reembed(s: &Shared, name: &str) {
    {
        let mut jobs = s.reembeds.lock();
        if jobs.get(name).is_some_and(|j| j.error.is_none()) {
            return; // the running job re-checks the version when it finishes
        }
        jobs.insert(
            name.to_owned(),
            Reembed {
                target_version: String::new(),
                done: 0,
                total: 0,
                error: None,
            },
        );
    }
    let s = s.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            match reembed_once(&s, &name).await {
                Ok(true) => continue, // switched; check for a newer version
                Ok(false) => {
                    s.reembeds.lock().remove(&name);
                    return;
                }
                Err(e) => {
                    tracing::error!(collection = %name, error = %e.message(), "re-embedding failed");
                    if let Some(j) = s.reembeds.lock().get_mut(&name) {
                        j.error = Some(e.message());
                    }
                    return;
                }
            }
        }
    });
}

/// One pass: Ok(true) when it switched the collection to a new version, Ok(false)
/// when it was already current.
async fn reembed_once(s: &Shared, name: &str) -> Result<bool, ApiError> {
    let c = s.index.get(name)?;
    let cfg = c.config();
    let Some(adapter) = cfg.space.adapter.clone() else {
        return Ok(false);
    };
    let (info, a) = s.registry.get(&adapter)?;
    if cfg.space.adapter_version.as_deref() == Some(info.version.as_str()) {
        return Ok(false);
    }
    let docs = c.documents();
    if let Some(j) = s.reembeds.lock().get_mut(name) {
        j.target_version = info.version.clone();
        j.total = docs.len();
        j.done = 0;
    }
    tracing::info!(collection = name, version = %info.version, docs = docs.len(), "re-embedding");
    let mut new_cfg = cfg.clone();
    new_cfg.space.adapter_version = Some(info.version.clone());
    let index = s.index.clone();
    let staged_cfg = new_cfg.clone();
    let staging = blocking(move || Ok(index.create_staging(staged_cfg)?)).await?;
    for chunk in docs.chunks(64) {
        let texts = chunk.iter().map(|d| Text::Single(d.text.clone())).collect();
        let vectors = s.embed(texts, Some(a.clone())).await?;
        let batch: Vec<Doc> = chunk
            .iter()
            .zip(vectors)
            .map(|(d, v)| Doc {
                vector: v,
                ..d.clone()
            })
            .collect();
        let st = staging.clone();
        let n = batch.len();
        blocking(move || Ok(st.upsert(batch)?)).await?;
        if let Some(j) = s.reembeds.lock().get_mut(name) {
            j.done += n;
        }
    }
    // Writes are refused while the job runs, but one accepted just before it started
    // may land in the old collection after the copy: carry such changes over.
    loop {
        let now: std::collections::HashMap<String, Doc> = c
            .documents()
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let staged: std::collections::HashMap<String, Doc> = staging
            .documents()
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let changed: Vec<Doc> = now
            .values()
            .filter(|d| {
                staged
                    .get(&d.id)
                    .is_none_or(|x| x.text != d.text || x.metadata != d.metadata)
            })
            .cloned()
            .collect();
        let gone: Vec<String> = staged
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        if changed.is_empty() && gone.is_empty() {
            break;
        }
        let texts = changed
            .iter()
            .map(|d| Text::Single(d.text.clone()))
            .collect();
        let vectors = s.embed(texts, Some(a.clone())).await?;
        let batch: Vec<Doc> = changed
            .into_iter()
            .zip(vectors)
            .map(|(d, v)| Doc { vector: v, ..d })
            .collect();
        let st = staging.clone();
        blocking(move || {
            st.upsert(batch)?;
            st.delete(&gone)?;
            Ok(())
        })
        .await?;
    }
    let index = s.index.clone();
    let n = name.to_owned();
    blocking(move || Ok(index.promote(&n, staging)?)).await?;
    tracing::info!(collection = name, version = %info.version, "re-embedded and switched");
    Ok(true)
}
