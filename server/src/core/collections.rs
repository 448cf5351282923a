//! Collections: create, describe, list, delete; documents (embedded with the
//! collection's pinned adapter version, durable on return); search with a filter,
//! a threshold, exact scoring and optional re-ranking.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use aside_adapters::{Adapter, Task};
use aside_index::{
    CollectionConfig, Doc, Filter, Fusion, HnswParams, JobState, LexicalQuery, Query, Space,
    StoreKind, StoredCollection,
};

use super::batcher::Text;
use super::types::{
    CollectionInfo, CollectionList, CollectionStatus, CreateCollectionRequest, Deleted, Document,
    FoundBy, Hit, Hnsw, Mode, Reembed, SearchRequest, SearchResponse, SideRank, Timings,
    UpsertRequest, UpsertResponse,
};
use super::{Core, Error, Result};

fn hit(h: aside_index::Hit, found_by: Option<FoundBy>) -> Hit {
    Hit {
        id: h.id,
        score: h.score,
        text: h.text,
        metadata: h.metadata,
        found_by,
    }
}

/// Largest `k` and rerank candidate count.
pub const MAX_K: usize = 1000;

/// `reembedding` while a job still has a version to switch to, else `ready`.
fn status(cfg: &CollectionConfig, job: Option<&Reembed>) -> CollectionStatus {
    match job {
        Some(j)
            if j.error.is_none()
                && cfg.space.adapter_version.as_deref() != Some(j.target_version.as_str()) =>
        {
            CollectionStatus::Reembedding
        }
        _ => CollectionStatus::Ready,
    }
}

fn reembed_of(j: JobState) -> Reembed {
    Reembed {
        target_version: j.target_version,
        done: j.done,
        total: j.total,
        error: j.error,
    }
}

impl Core {
    /// The adapter version a collection's vectors were made with, pinned.
    pub(crate) fn pinned(&self, space: &Space) -> Result<Option<Arc<Adapter>>> {
        match (&space.adapter, &space.adapter_version) {
            (Some(n), Some(v)) => Ok(Some(self.registry.get_version(n, v)?)),
            _ => Ok(None),
        }
    }

    /// The re-embedding a collection is in, wherever it runs: this process's job,
    /// or (a shared store) the job another replica records, or one that no replica
    /// has started yet (the adapter's current version is newer than the vectors').
    pub(crate) fn job_of(&self, c: &dyn StoredCollection) -> Option<Reembed> {
        let cfg = c.config();
        if let Some(j) = self.reembed_job(&cfg.name) {
            return Some(j);
        }
        if c.kind() == StoreKind::Local {
            return None;
        }
        let current = self
            .registry
            .current_info(cfg.space.adapter.as_deref()?)
            .ok()?
            .version;
        let stored = c.job().map(reembed_of);
        if cfg.space.adapter_version.as_deref() == Some(current.as_str()) {
            return stored.filter(|j| j.error.is_some());
        }
        Some(match stored {
            Some(j) if j.target_version == current => j,
            _ => Reembed {
                target_version: current,
                done: 0,
                total: 0,
                error: None,
            },
        })
    }

    async fn describe(&self, c: &dyn StoredCollection) -> Result<CollectionInfo> {
        let cfg = c.config().clone();
        let st = c.stats().await?;
        let job = self.job_of(c);
        Ok(CollectionInfo {
            status: status(&cfg, job.as_ref()),
            reembed: job,
            store: c.kind().into(),
            engine: cfg.engine.into(),
            lexical: cfg.lexical.map(|l| super::types::Lexical {
                language: l.language,
            }),
            name: cfg.name,
            adapter: cfg.space.adapter,
            adapter_version: cfg.space.adapter_version,
            backbone: cfg.space.backbone,
            dim: cfg.dim,
            metric: cfg.metric.into(),
            hnsw: Hnsw {
                m: cfg.hnsw.m,
                ef_construction: cfg.hnsw.ef_construction,
                ef: cfg.hnsw.ef,
            },
            count: st.count,
            tombstones: st.tombstones,
            unindexed: st.unindexed,
            damage: c.damage(),
        })
    }

    /// Collections that lost data or could not be opened, with what and why.
    pub fn damaged(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = self
            .stores
            .failed()
            .iter()
            .map(|(n, why)| (n.clone(), vec![format!("not opened: {why}")]))
            .collect();
        for c in self.stores.local.list() {
            if !c.damage().is_empty() {
                out.insert(c.config().name, c.damage().to_vec());
            }
        }
        out
    }

    pub(crate) async fn collection(&self, name: &str) -> Result<Arc<dyn StoredCollection>> {
        self.stores.open(name).await
    }

    pub async fn create_collection(
        &self,
        name: &str,
        r: CreateCollectionRequest,
    ) -> Result<CollectionInfo> {
        let _use = self.adapter_use.lock().await;
        let (adapter, version) = match &r.adapter {
            Some(n) => (
                Some(n.clone()),
                Some(self.adapter_for(n, Task::Retrieval)?.0.version),
            ),
            None => (None, None),
        };
        let d = HnswParams::default();
        let h = r.hnsw.unwrap_or_default();
        let config = CollectionConfig {
            name: name.to_owned(),
            dim: self.backbone.hidden_size(),
            metric: r.metric.unwrap_or_default().into(),
            hnsw: HnswParams {
                m: h.m.unwrap_or(d.m),
                ef_construction: h.ef_construction.unwrap_or(d.ef_construction),
                ef: h.ef.unwrap_or(d.ef),
            },
            space: Space {
                backbone: self.backbone.sha256().to_owned(),
                adapter,
                adapter_version: version,
            },
            engine: r.engine.map(Into::into).unwrap_or_default(),
            lexical: super::types::LexicalSpec::settings(r.lexical.as_ref())
                .map_err(|e| Error::invalid("lexical", e))?
                .map(|l| aside_index::LexicalSettings {
                    language: l.language,
                }),
        };
        config.validate()?;
        let kind = r.store.map_or(self.stores.default, Into::into);
        if kind != StoreKind::Local && r.engine.is_some_and(|e| e != super::types::Engine::Graph) {
            return Err(Error::invalid(
                "engine",
                "the engine applies to local collections; a Milvus collection uses Milvus's HNSW",
            ));
        }
        let store = self.stores.store(kind)?;
        // A name is unique across the stores.
        match self.stores.open(name).await {
            Ok(_) => {
                return Err(Error::AlreadyExists {
                    what: "collection",
                    name: name.to_owned(),
                })
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let c = store.create(config).await?;
        self.describe(c.as_ref()).await
    }

    pub async fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        let c = self.collection(name).await?;
        self.describe(c.as_ref()).await
    }

    pub async fn list_collections(&self) -> Result<CollectionList> {
        let mut collections = Vec::new();
        for c in self.stores.list().await? {
            collections.push(self.describe(c.as_ref()).await?);
        }
        Ok(CollectionList { collections })
    }

    fn not_reembedding(&self, c: &dyn StoredCollection) -> Result<()> {
        let cfg = c.config();
        if let Some(j) = self.job_of(c) {
            if status(cfg, Some(&j)) == CollectionStatus::Reembedding {
                return Err(Error::conflict(format!(
                    "collection `{}` is being re-embedded with adapter version {} ({}/{} done); retry when its status is ready",
                    cfg.name, j.target_version, j.done, j.total
                )));
            }
        }
        Ok(())
    }

    pub async fn delete_collection(&self, name: &str) -> Result<Deleted> {
        let c = self.collection(name).await?;
        self.not_reembedding(c.as_ref())?;
        self.stores.store(c.kind())?.remove(name).await?;
        Ok(Deleted {
            deleted: name.to_owned(),
        })
    }

    /// Embeds and writes documents; they are durable when this returns.
    pub async fn upsert(&self, name: &str, r: UpsertRequest) -> Result<UpsertResponse> {
        let c = self.collection(name).await?;
        self.not_reembedding(c.as_ref())?;
        if r.documents.is_empty() {
            return Err(Error::invalid("documents", "must not be empty"));
        }
        if r.documents.len() > self.limits.max_documents {
            return Err(Error::too_large(format!(
                "{} documents in one request; the limit is {} (--max-documents)",
                r.documents.len(),
                self.limits.max_documents
            )));
        }
        let mut seen = HashSet::new();
        for d in &r.documents {
            if !seen.insert(d.id.as_str()) {
                return Err(Error::invalid(
                    "documents",
                    format!("document id `{}` appears more than once", d.id),
                ));
            }
            if d.metadata.as_ref().is_some_and(|m| !m.is_object()) {
                return Err(Error::invalid(
                    "documents",
                    format!("document `{}`: metadata must be an object", d.id),
                ));
            }
        }
        let adapter = self.pinned(&c.config().space)?;
        // Embedded in requests of at most --max-inputs each, written as one.
        let mut vectors = Vec::with_capacity(r.documents.len());
        for chunk in r.documents.chunks(self.limits.max_inputs.max(1)) {
            let texts = chunk.iter().map(|d| Text::Single(d.text.clone())).collect();
            vectors.extend(self.embed_texts(texts, adapter.clone()).await?);
        }
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
        // A shared store: another replica may have started a re-embedding while
        // these were embedded; the write goes only to a collection still current.
        let c = if c.kind() == StoreKind::Local {
            c
        } else {
            let now = self.collection(name).await?;
            self.not_reembedding(now.as_ref())?;
            if now.config().space != c.config().space {
                return Err(Error::conflict(format!(
                    "collection `{name}` switched to another adapter version meanwhile; retry"
                )));
            }
            now
        };
        let upserted = c.upsert(docs).await?;
        Ok(UpsertResponse { upserted })
    }

    pub async fn get_document(&self, name: &str, id: &str) -> Result<Document> {
        let d = self
            .collection(name)
            .await?
            .get(id)
            .await?
            .ok_or_else(|| Error::no_document(name, id))?;
        Ok(Document {
            id: d.id,
            text: d.text,
            metadata: d.metadata,
        })
    }

    pub async fn delete_document(&self, name: &str, id: &str) -> Result<Deleted> {
        let c = self.collection(name).await?;
        self.not_reembedding(c.as_ref())?;
        let n = c.delete(vec![id.to_owned()]).await?;
        if n == 0 {
            return Err(Error::no_document(name, id));
        }
        Ok(Deleted {
            deleted: id.to_owned(),
        })
    }

    /// Embeds the query with the collection's adapter version, searches, and
    /// optionally re-ranks the candidates.
    pub async fn search(&self, name: &str, r: SearchRequest) -> Result<SearchResponse> {
        let c = self.collection(name).await?;
        let k = r.k.unwrap_or(10);
        if k == 0 || k > MAX_K {
            return Err(Error::invalid(
                "k",
                format!("{k} is out of range 1..={MAX_K}"),
            ));
        }
        let filter = r.filter.as_ref().map(Filter::parse).transpose()?;
        let reranker = match &r.rerank {
            Some(spec) => Some(self.adapter_for(&spec.adapter, Task::Rerank)?),
            None => None,
        };
        let candidates = r
            .rerank
            .as_ref()
            .map_or(k, |x| x.candidates.unwrap_or(100).max(k));
        if candidates > MAX_K {
            return Err(Error::invalid(
                "rerank.candidates",
                format!("{candidates} is out of range 1..={MAX_K}"),
            ));
        }
        let fuse = r.rerank.as_ref().and_then(|x| x.fuse).unwrap_or(0.0);
        if !fuse.is_finite() || fuse < 0.0 {
            return Err(Error::invalid(
                "rerank.fuse",
                format!("{fuse} must be a finite number >= 0"),
            ));
        }
        if let Some(t) = r.threshold.filter(|t| !t.is_finite()) {
            return Err(Error::invalid(
                "threshold",
                format!("{t} is not a finite number"),
            ));
        }
        let mode = r.mode.unwrap_or_default();
        let fusion = match (&r.fusion, mode) {
            (Some(f), Mode::Hybrid) => f.fusion().map_err(|(f, m)| Error::invalid(f, m))?,
            (Some(_), _) => return Err(Error::invalid("fusion", "applies to mode hybrid")),
            (None, _) => Fusion::default(),
        };
        let per_side = match (r.candidates, mode) {
            (Some(n), Mode::Hybrid) if (1..=MAX_K).contains(&n) => n,
            (Some(n), Mode::Hybrid) => {
                return Err(Error::invalid(
                    "candidates",
                    format!("{n} is out of range 1..={MAX_K}"),
                ))
            }
            (Some(_), _) => {
                return Err(Error::invalid(
                    "candidates",
                    "applies to mode hybrid (per side); re-ranking takes rerank.candidates",
                ))
            }
            (None, _) => candidates.max(100),
        };
        if mode != Mode::Dense && r.query.trim().is_empty() {
            return Err(Error::invalid("query", "is empty"));
        }
        let cfg = c.config().clone();
        let (ef, threshold, exact) = (r.ef, r.threshold, r.exact.unwrap_or(false));
        let mut embed_ms = 0.0;
        // The query is embedded with exactly the version the collection's vectors use.
        let embed = async {
            let adapter = self.pinned(&cfg.space)?;
            let t0 = Instant::now();
            let q = self
                .embed_texts(vec![Text::Single(r.query.clone())], adapter)
                .await?
                .remove(0);
            Ok::<_, Error>((q, t0.elapsed().as_secs_f64() * 1e3))
        };
        let lexical = |k: usize, threshold: Option<f32>| LexicalQuery {
            text: r.query.clone(),
            k,
            filter: filter.clone(),
            threshold,
        };
        let t1;
        let mut hits: Vec<Hit> = match mode {
            Mode::Dense => {
                let (q, ms) = embed.await?;
                embed_ms = ms;
                t1 = Instant::now();
                c.search(Query {
                    vector: q,
                    k: candidates,
                    ef,
                    filter: filter.clone(),
                    threshold,
                    exact,
                })
                .await?
                .into_iter()
                .map(|h| hit(h, None))
                .collect()
            }
            Mode::Lexical => {
                t1 = Instant::now();
                c.search_lexical(lexical(candidates, threshold))
                    .await?
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let side = SideRank {
                            rank: i + 1,
                            score: h.score,
                        };
                        hit(
                            h,
                            Some(FoundBy {
                                dense: None,
                                lexical: Some(side),
                            }),
                        )
                    })
                    .collect()
            }
            Mode::Hybrid => {
                // The lexical side runs while the query is embedded.
                let lex = c.search_lexical(lexical(per_side, None));
                let (embedded, lex) = tokio::join!(embed, lex);
                let (q, ms) = embedded?;
                embed_ms = ms;
                t1 = Instant::now();
                let dense = c
                    .search(Query {
                        vector: q,
                        k: per_side,
                        ef,
                        filter: filter.clone(),
                        threshold: None,
                        exact,
                    })
                    .await?;
                aside_index::fuse(dense, lex?, fusion)
                    .into_iter()
                    .filter(|f| threshold.is_none_or(|t| f.hit.score >= t))
                    .take(candidates)
                    .map(|f| {
                        let side = |s: aside_index::Side| SideRank {
                            rank: s.rank,
                            score: s.score,
                        };
                        let found = FoundBy {
                            dense: f.dense.map(side),
                            lexical: f.lexical.map(side),
                        };
                        hit(f.hit, Some(found))
                    })
                    .collect()
            }
        };
        let search_ms = t1.elapsed().as_secs_f64() * 1e3;
        let mut rerank_ms = None;
        if let Some((_, a)) = reranker {
            let t2 = Instant::now();
            let texts: Vec<String> = hits.iter().map(|h| h.text.clone()).collect();
            // The candidates are the server's choice: up to MAX_K, whatever the
            // per-request input limit.
            let scores = self.score_pairs(a, &r.query, &texts, false).await?;
            for (h, sc) in hits.iter_mut().zip(scores) {
                h.score = sc + fuse * h.score;
            }
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
            rerank_ms = Some(t2.elapsed().as_secs_f64() * 1e3);
        }
        hits.truncate(k);
        Ok(SearchResponse {
            hits,
            adapter_version: cfg.space.adapter_version.clone(),
            timings: Timings {
                embed_ms,
                search_ms,
                rerank_ms,
            },
        })
    }

    /// The adapter a local collection's vectors use (for metrics labels).
    pub fn collection_adapter(&self, name: &str) -> Option<String> {
        self.stores.local.get(name).ok()?.config().space.adapter
    }
}
