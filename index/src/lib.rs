//! Per-task vector collections: documents, an HNSW graph with tombstones, metadata
//! filters, a write-ahead log with group commit, snapshots, and a background indexer.
//!
//! ```text
//! Index (root dir) ── name → Arc<Collection>
//!   Collection: manifest.json   config + embedding space
//!               wal-{g}.log     framed, checksummed changes (fsync before ack)
//!               snap-{g}.bin    every slot and the graph, checksummed
//!               memory: id → (slot, text, metadata); slot → id | tombstone;
//!                       slot vectors (one flat array); graph links over them
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `collection.rs` | one collection: writes, search, indexer, snapshots, compaction |
//! | `graph.rs` | the HNSW graph: concurrent insert, search, encoding |
//! | `wal.rs` | log records, segments, replay, group commit |
//! | `snapshot.rs` | the snapshot file |
//! | `filter.rs` | metadata filters |
//! | `metric.rs` | metrics, scores, the graph's distance |
//!
//! | `hnswrs.rs` | the `hnsw_rs` engine, behind the same collection code |
//! | `lexical.rs` | the BM25 index on tantivy (keyed by id + text, reconciled with the log on open) |
//! | `store.rs` | the store interface (embedded engine and Milvus) |
//! | `milvus.rs` | the Milvus store |
//!
//! The default graph is ours; `Engine::HnswRs` puts the hnsw_rs crate's graph
//! behind the same log, slots, filters and snapshots (a cross-check of ours, and the
//! engine the first design named). No graph type appears in the public API.

mod collection;
mod error;
mod filter;
mod fusion;
mod graph;
mod hnswrs;
mod lexical;
mod metric;
pub mod milvus;
mod snapshot;
pub mod store;
mod wal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

pub use collection::{
    Collection, CollectionConfig, Engine, Hit, HnswParams, LexicalRequest, SearchRequest, Space,
    Stats, EXACT_BELOW, MAX_UNINDEXED,
};
pub use error::{IndexError, Result};
pub use filter::Filter;
pub use fusion::{fuse, Fused, Fusion, Side};
pub use lexical::{terms, LexicalSettings, COMMIT_INTERVAL, LANGUAGES};
pub use metric::Metric;
pub use store::{JobState, LexicalQuery, Query, Store, StoreKind, StoredCollection};
pub use wal::Doc;

use error::io_err;

/// Checks a collection name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    Ok(aside_common::check_name(name)?)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    Ok(aside_common::sync_dir(dir)?)
}

/// Temp file, fsync, rename, directory fsync.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(aside_common::write_atomic(path, bytes)?)
}

/// All collections under one directory.
#[derive(Debug)]
pub struct Index {
    root: PathBuf,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    warnings: Vec<String>,
    /// Collections left on disk because they could not be opened, with the reason.
    failed: BTreeMap<String, String>,
    /// Staging copies being filled (re-embedding), by the name they will replace.
    staging: parking_lot::Mutex<BTreeMap<String, Arc<Collection>>>,
}

impl Index {
    /// Opens every collection under `root` (created if missing). A collection that
    /// cannot be opened is reported in [`Index::warnings`] and left on disk untouched.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let mut map = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut failed = BTreeMap::new();
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(root)
            .map_err(io_err(root))?
            .collect::<std::io::Result<_>>()
            .map_err(io_err(root))?;
        // Hidden entries first, so a restored collection is opened below.
        entries.sort_by_key(|e| !e.file_name().to_string_lossy().starts_with('.'));
        let mut restored = Vec::new();
        for e in entries.iter() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // Another process's work in progress (a staging copy it fills):
                // neither restored nor removed.
                if collection::locked_elsewhere(&e.path()) {
                    warnings.push(format!(
                        "{name}: left alone, another process holds its lock"
                    ));
                    continue;
                }
                // `.deleted-X` without `X` is a replacement cut short between its two
                // renames: the old collection is put back (its re-embedding restarts).
                if let Some(orig) = name.strip_prefix(".deleted-") {
                    let target = root.join(orig);
                    if !target.exists() && e.path().join("manifest.json").is_file() {
                        std::fs::rename(e.path(), &target).map_err(io_err(&target))?;
                        warnings.push(format!(
                            "collection `{orig}`: restored after an interrupted replacement"
                        ));
                        restored.push(orig.to_owned());
                        continue;
                    }
                }
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
        }
        let names = entries
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .chain(restored);
        for name in names {
            let path = root.join(&name);
            if !path.join("manifest.json").is_file() {
                continue;
            }
            match Collection::open(&path) {
                Ok(c) => {
                    warnings.extend(
                        c.warnings()
                            .iter()
                            .map(|w| format!("collection `{name}`: {w}")),
                    );
                    map.insert(name, c);
                }
                Err(err) => {
                    warnings.push(format!("collection `{name}` not opened: {err}"));
                    failed.insert(name, err.to_string());
                }
            }
        }
        Ok(Index {
            root: root.to_owned(),
            collections: RwLock::new(map),
            warnings,
            failed,
            staging: Default::default(),
        })
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Collections that could not be opened (a corrupt manifest, no readable
    /// snapshot or log), by name, with the reason; their files are left untouched.
    pub fn failed(&self) -> &BTreeMap<String, String> {
        &self.failed
    }

    pub fn create(&self, config: CollectionConfig) -> Result<Arc<Collection>> {
        config.validate()?;
        let mut map = self.collections.write();
        if map.contains_key(&config.name) {
            return Err(IndexError::CollectionExists(config.name));
        }
        let dir = self.root.join(&config.name);
        if dir.exists() {
            return Err(IndexError::CollectionExists(config.name));
        }
        // Built under a hidden name, then renamed: a crash leaves no half collection.
        let tmp = self.root.join(format!(".creating-{}", config.name));
        let _ = std::fs::remove_dir_all(&tmp);
        let name = config.name.clone();
        Collection::create(&tmp, config)?;
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        sync_dir(&self.root)?;
        let c = Collection::open(&dir)?;
        map.insert(name, c.clone());
        Ok(c)
    }

    pub fn get(&self, name: &str) -> Result<Arc<Collection>> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| IndexError::UnknownCollection(name.to_owned()))
    }

    pub fn list(&self) -> Vec<Arc<Collection>> {
        self.collections.read().values().cloned().collect()
    }

    /// Creates a hidden staging collection that will replace `config.name` on
    /// [`Index::promote`] (used to re-embed a collection into a new space).
    pub fn create_staging(&self, config: CollectionConfig) -> Result<Arc<Collection>> {
        config.validate()?;
        let dir = self.root.join(format!(".staging-{}", config.name));
        let _ = std::fs::remove_dir_all(&dir);
        let name = config.name.clone();
        let c = Collection::create_with(&dir, config, true)?;
        self.staging.lock().insert(name, c.clone());
        Ok(c)
    }

    /// The staging copy [`Index::create_staging`] made for `name`, handed over once.
    pub fn staging_of(&self, name: &str) -> Option<Arc<Collection>> {
        self.staging.lock().remove(name)
    }

    /// Atomically (for readers) replaces a collection with its staging copy.
    pub fn promote(&self, name: &str, staging: Arc<Collection>) -> Result<Arc<Collection>> {
        // The snapshot then carries the whole graph, and the collection opens ready.
        staging.wait_indexed();
        staging.snapshot()?;
        drop(staging);
        let mut map = self.collections.write();
        let dir = self.root.join(name);
        let trash = self.root.join(format!(".deleted-{name}"));
        let staged = self.root.join(format!(".staging-{name}"));
        // The documents' texts are the same: the lexical index is carried over (its
        // files linked), and opening applies only what differs.
        if let Some(old) = map.get(name) {
            if let Err(e) = old.link_lexical(&staged.join("lexical")) {
                tracing::warn!(
                    "collection `{name}`: lexical index not carried over ({e}); it is rebuilt"
                );
                let _ = std::fs::remove_dir_all(staged.join("lexical"));
            }
        }
        let _ = std::fs::remove_dir_all(&trash);
        if dir.exists() {
            std::fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        }
        std::fs::rename(&staged, &dir).map_err(io_err(&staged))?;
        sync_dir(&self.root)?;
        let _ = std::fs::remove_dir_all(&trash);
        let c = Collection::open(&dir)?;
        map.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        let mut map = self.collections.write();
        if map.remove(name).is_none() {
            return Err(IndexError::UnknownCollection(name.to_owned()));
        }
        let dir = self.root.join(name);
        let trash = self.root.join(format!(".deleted-{name}"));
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        sync_dir(&self.root)?;
        let _ = std::fs::remove_dir_all(&trash);
        Ok(())
    }
}
