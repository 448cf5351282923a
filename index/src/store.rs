//! The store interface: where a collection's documents live. The core service talks
//! only to these two traits; [`Index`] (the embedded engine: our graph, log and
//! snapshots on this machine's disk) is one implementation, [`crate::milvus`] (a
//! Milvus cluster shared by every replica) the other.
//!
//! A [`Store`] names collections; a [`StoredCollection`] is one collection *as
//! opened*: its configuration, embedding space included, is fixed for the handle's
//! life. A search embeds its query in the handle's space and searches that
//! handle, so a re-embedding that switches the collection in between can never
//! mix two versions in one answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::{Collection, CollectionConfig, Doc, Filter, Hit, Index, Stats};

/// Which store holds a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded engine under `--data-dir` (one process's collections).
    #[default]
    Local,
    /// A Milvus cluster (every replica's collections).
    Milvus,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Local => "local",
            StoreKind::Milvus => "milvus",
        })
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(StoreKind::Local),
            "milvus" => Ok(StoreKind::Milvus),
            _ => Err(format!("unknown store `{s}` (expected local or milvus)")),
        }
    }
}

/// A search, owned (it crosses to a blocking thread or a remote call).
#[derive(Debug, Clone)]
pub struct Query {
    pub vector: Vec<f32>,
    pub k: usize,
    pub ef: Option<usize>,
    pub filter: Option<Filter>,
    /// Drop hits scoring below this.
    pub threshold: Option<f32>,
    /// Brute force instead of the graph.
    pub exact: bool,
}

/// A lexical (BM25) search, owned.
#[derive(Debug, Clone)]
pub struct LexicalQuery {
    pub text: String,
    pub k: usize,
    pub filter: Option<Filter>,
    /// Drop hits whose BM25 score is below this.
    pub threshold: Option<f32>,
}

/// The progress of a re-embedding as the store keeps it, for every replica to see.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub target_version: String,
    pub done: usize,
    pub total: usize,
    pub error: Option<String>,
}

/// Named collections of one store.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> StoreKind;
    async fn create(&self, config: CollectionConfig) -> Result<Arc<dyn StoredCollection>>;
    /// The collection as it is now; `UnknownCollection` when the store has none.
    async fn open(&self, name: &str) -> Result<Arc<dyn StoredCollection>>;
    async fn list(&self) -> Result<Vec<Arc<dyn StoredCollection>>>;
    async fn remove(&self, name: &str) -> Result<()>;
    /// A hidden copy that [`Store::promote`] makes the collection `config.name`
    /// (re-embedding into a new space). A leftover one of an earlier try is replaced.
    async fn create_staging(&self, config: CollectionConfig) -> Result<Arc<dyn StoredCollection>>;
    /// Replaces the collection with its staging copy in one step for readers.
    async fn promote(&self, name: &str, staging: Arc<dyn StoredCollection>) -> Result<()>;
    /// Records a re-embedding's progress where every replica reads it.
    async fn set_job(&self, name: &str, job: Option<JobState>) -> Result<()>;
    /// Collections left unopened (corrupt files), with the reason.
    fn failed(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// One collection as opened.
#[async_trait]
pub trait StoredCollection: Send + Sync {
    fn kind(&self) -> StoreKind;
    fn config(&self) -> &CollectionConfig;
    /// What opening found lost (the embedded engine's skipped log records).
    fn damage(&self) -> Vec<String> {
        Vec::new()
    }
    /// The re-embedding progress the store holds (shared stores only).
    fn job(&self) -> Option<JobState> {
        None
    }
    async fn stats(&self) -> Result<Stats>;
    /// Writes documents; they are durable when this returns.
    async fn upsert(&self, docs: Vec<Doc>) -> Result<usize>;
    /// Removes documents; returns how many existed.
    async fn delete(&self, ids: Vec<String>) -> Result<usize>;
    async fn get(&self, id: &str) -> Result<Option<Doc>>;
    /// Every live document (vectors included).
    async fn documents(&self) -> Result<Vec<Doc>>;
    async fn search(&self, q: Query) -> Result<Vec<Hit>>;
    /// Top-k by BM25 over the text (collections with `lexical` settings).
    async fn search_lexical(&self, q: LexicalQuery) -> Result<Vec<Hit>>;
}

/// Runs index work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IndexError::Backend(format!("index task failed: {e}")))?
}

/// The embedded engine's collection behind the interface.
#[derive(Debug)]
pub struct LocalCollection {
    inner: Arc<Collection>,
    config: CollectionConfig,
}

impl LocalCollection {
    pub fn new(inner: Arc<Collection>) -> Self {
        LocalCollection {
            config: inner.config(),
            inner,
        }
    }
}

#[async_trait]
impl StoredCollection for LocalCollection {
    fn kind(&self) -> StoreKind {
        StoreKind::Local
    }
    fn config(&self) -> &CollectionConfig {
        &self.config
    }
    fn damage(&self) -> Vec<String> {
        self.inner.damage().to_vec()
    }
    async fn stats(&self) -> Result<Stats> {
        Ok(self.inner.stats())
    }
    async fn upsert(&self, docs: Vec<Doc>) -> Result<usize> {
        let c = self.inner.clone();
        blocking(move || c.upsert(docs)).await
    }
    async fn delete(&self, ids: Vec<String>) -> Result<usize> {
        let c = self.inner.clone();
        blocking(move || c.delete(&ids)).await
    }
    async fn get(&self, id: &str) -> Result<Option<Doc>> {
        Ok(self.inner.get(id))
    }
    async fn documents(&self) -> Result<Vec<Doc>> {
        let c = self.inner.clone();
        blocking(move || Ok(c.documents())).await
    }
    async fn search(&self, q: Query) -> Result<Vec<Hit>> {
        let c = self.inner.clone();
        blocking(move || {
            c.search(&crate::SearchRequest {
                vector: &q.vector,
                k: q.k,
                ef: q.ef,
                filter: q.filter.as_ref(),
                threshold: q.threshold,
                exact: q.exact,
            })
        })
        .await
    }
    async fn search_lexical(&self, q: LexicalQuery) -> Result<Vec<Hit>> {
        let c = self.inner.clone();
        blocking(move || {
            c.search_lexical(&crate::LexicalRequest {
                text: &q.text,
                k: q.k,
                filter: q.filter.as_ref(),
                threshold: q.threshold,
            })
        })
        .await
    }
}

fn local(c: Arc<Collection>) -> Arc<dyn StoredCollection> {
    Arc::new(LocalCollection::new(c))
}

#[async_trait]
impl Store for Arc<Index> {
    fn kind(&self) -> StoreKind {
        StoreKind::Local
    }
    async fn create(&self, config: CollectionConfig) -> Result<Arc<dyn StoredCollection>> {
        let ix = self.clone();
        blocking(move || Index::create(&ix, config))
            .await
            .map(local)
    }
    async fn open(&self, name: &str) -> Result<Arc<dyn StoredCollection>> {
        Index::get(self, name).map(local)
    }
    async fn list(&self) -> Result<Vec<Arc<dyn StoredCollection>>> {
        Ok(Index::list(self).into_iter().map(local).collect())
    }
    async fn remove(&self, name: &str) -> Result<()> {
        let (ix, n) = (self.clone(), name.to_owned());
        blocking(move || Index::delete(&ix, &n)).await
    }
    async fn create_staging(&self, config: CollectionConfig) -> Result<Arc<dyn StoredCollection>> {
        let ix = self.clone();
        blocking(move || Index::create_staging(&ix, config))
            .await
            .map(local)
    }
    async fn promote(&self, name: &str, staging: Arc<dyn StoredCollection>) -> Result<()> {
        let c = Index::staging_of(self, name)
            .ok_or_else(|| IndexError::Backend(format!("no staging copy of `{name}`")))?;
        drop(staging);
        let (ix, n) = (self.clone(), name.to_owned());
        blocking(move || Index::promote(&ix, &n, c).map(|_| ())).await
    }
    async fn set_job(&self, _name: &str, _job: Option<JobState>) -> Result<()> {
        // One process owns a local collection: its progress lives in that process.
        Ok(())
    }
    fn failed(&self) -> BTreeMap<String, String> {
        Index::failed(self).clone()
    }
}
