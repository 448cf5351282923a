//! The background re-embedding that follows an adapter update: every collection
//! using the adapter is copied into a staging collection with vectors from the new
//! version, then promoted in one step. Searches keep the old vectors and version
//! until the switch; document writes answer 409 meanwhile.
//!
//! With a shared store every replica may notice the update; the one that takes the
//! collection's lease (a file lock in the shared data directory) does the work and
//! records its progress in the store, and a replica that finds the lease free later
//! (its holder died) takes the job over.

use std::collections::HashMap;
use std::sync::Arc;

use aside_index::{Doc, JobState, StoreKind, StoredCollection};

use super::batcher::Text;
use super::types::Reembed;
use super::{Core, Result, Shared};

impl Core {
    pub(crate) fn reembed_job(&self, name: &str) -> Option<Reembed> {
        self.reembeds.lock().get(name).cloned()
    }

    /// Starts re-embedding every collection that uses `adapter` at an older version.
    pub async fn start_reembeds(self: &Shared, adapter: &str) {
        let list = match self.stores.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "listing collections to re-embed");
                return;
            }
        };
        for c in list {
            let cfg = c.config();
            if cfg.space.adapter.as_deref() == Some(adapter) {
                self.start_reembed(&cfg.name);
            }
        }
    }

    /// Re-embeds collections left behind their adapter's current version (an upload
    /// that came before a restart, or through another replica).
    pub async fn resume_reembeds(self: &Shared) {
        let list = match self.stores.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing collections to re-embed");
                return;
            }
        };
        for c in list {
            let cfg = c.config();
            let Some(adapter) = cfg.space.adapter.as_deref() else {
                continue;
            };
            let Ok(info) = self.registry.current_info(adapter) else {
                continue;
            };
            let behind = cfg.space.adapter_version.as_deref() != Some(info.version.as_str());
            // A job that failed on this version is not retried in a loop.
            let failed = c
                .job()
                .is_some_and(|j| j.error.is_some() && j.target_version == info.version);
            if behind && !failed {
                self.start_reembed(&cfg.name);
            }
        }
    }

    /// Replicas on a shared store: picks up adapters written by the others and
    /// collections left behind, every `period`.
    pub fn watch_shared(self: &Shared, period: std::time::Duration) {
        let s = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let reg = s.registry.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || reg.refresh()).await {
                    tracing::warn!(error = %e, "re-reading the adapter store");
                }
                s.resume_reembeds().await;
            }
        });
    }

    /// Starts (unless running) the re-embedding of one collection into its adapter's
    /// current version.
    fn start_reembed(self: &Shared, name: &str) {
        {
            let mut jobs = self.reembeds.lock();
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
        let s = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                match s.reembed_once(&name).await {
                    Ok(true) => continue, // switched; check for a newer version
                    Ok(false) => {
                        s.reembeds.lock().remove(&name);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(collection = %name, error = %e, "re-embedding failed");
                        if let Some(j) = s.reembeds.lock().get_mut(&name) {
                            j.error = Some(e.message());
                        }
                        return;
                    }
                }
            }
        });
    }

    fn progress(&self, name: &str, f: impl FnOnce(&mut Reembed)) {
        if let Some(j) = self.reembeds.lock().get_mut(name) {
            f(j);
        }
    }

    /// Embeds documents with `adapter` into `staging`.
    async fn embed_into(
        &self,
        staging: &Arc<dyn StoredCollection>,
        docs: Vec<Doc>,
        adapter: &Arc<aside_adapters::Adapter>,
        gone: Vec<String>,
    ) -> Result<usize> {
        let texts = docs.iter().map(|d| Text::Single(d.text.clone())).collect();
        let vectors = self.run_batch(texts, Some(adapter.clone())).await?;
        let batch: Vec<Doc> = docs
            .into_iter()
            .zip(vectors)
            .map(|(d, vector)| Doc { vector, ..d })
            .collect();
        let n = batch.len();
        if !batch.is_empty() {
            staging.upsert(batch).await?;
        }
        if !gone.is_empty() {
            staging.delete(gone).await?;
        }
        Ok(n)
    }

    /// One pass: Ok(true) when it switched the collection to a new version, Ok(false)
    /// when it was already current.
    async fn reembed_once(&self, name: &str) -> Result<bool> {
        let Some(_lease) = self.stores.try_lease(name)? else {
            tracing::debug!(collection = name, "another replica is re-embedding it");
            return Ok(false);
        };
        // Opened under the lease: a replica that finished the job just before we
        // took it has already switched the collection.
        let c = self.collection(name).await?;
        let cfg = c.config().clone();
        let Some(adapter) = cfg.space.adapter.clone() else {
            return Ok(false);
        };
        let (info, a) = self.registry.get(&adapter)?;
        if cfg.space.adapter_version.as_deref() == Some(info.version.as_str()) {
            return Ok(false);
        }
        let store = self.stores.store(c.kind())?;
        let shared = c.kind() != StoreKind::Local;
        let record = |done: usize, total: usize, error: Option<String>| {
            let store = store.clone();
            let job = JobState {
                target_version: info.version.clone(),
                done,
                total,
                error,
            };
            async move {
                if shared {
                    if let Err(e) = store.set_job(name, Some(job)).await {
                        tracing::warn!(collection = name, error = %e, "recording re-embedding progress");
                    }
                }
            }
        };
        let res = self
            .reembed_into(name, c, &cfg, &info.version, &a, &store, &record)
            .await;
        if let Err(e) = &res {
            let total = self.reembed_job(name).map_or(0, |j| j.total);
            record(0, total, Some(e.message())).await;
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    async fn reembed_into<F, Fut>(
        &self,
        name: &str,
        c: Arc<dyn StoredCollection>,
        cfg: &aside_index::CollectionConfig,
        version: &str,
        a: &Arc<aside_adapters::Adapter>,
        store: &Arc<dyn aside_index::Store>,
        record: &F,
    ) -> Result<bool>
    where
        F: Fn(usize, usize, Option<String>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let info_version = version.to_owned();
        let docs = c.documents().await?;
        let total = docs.len();
        self.progress(name, |j| {
            j.target_version = info_version.clone();
            j.total = total;
            j.done = 0;
        });
        record(0, total, None).await;
        tracing::info!(collection = name, version = %info_version, docs = total, "re-embedding");
        let mut new_cfg = cfg.clone();
        new_cfg.space.adapter_version = Some(info_version.clone());
        let staging = store.create_staging(new_cfg).await?;
        let mut done = 0;
        for (i, chunk) in docs.chunks(64).enumerate() {
            let n = self
                .embed_into(&staging, chunk.to_vec(), a, Vec::new())
                .await?;
            done += n;
            self.progress(name, |j| j.done += n);
            if i % 16 == 15 {
                record(done, total, None).await;
            }
        }
        // Writes are refused while the job runs, but one accepted just before it
        // started may land in the old collection after the copy: carry it over.
        let copied = self.carry_over(&c, &staging, a).await?;
        store.promote(name, staging.clone()).await?;
        if c.kind() != StoreKind::Local {
            // A write another replica accepted in the old version just before the
            // switch: carried over (only what changed there since the copy, so a
            // write to the new version is never overwritten).
            if let Ok(after) = c.documents().await {
                let after: HashMap<String, Doc> =
                    after.into_iter().map(|d| (d.id.clone(), d)).collect();
                let (changed, gone) = diff(&after, &copied);
                if !changed.is_empty() || !gone.is_empty() {
                    self.embed_into(&staging, changed, a, gone).await?;
                }
            }
        }
        tracing::info!(collection = name, version = %info_version, "re-embedded and switched");
        Ok(true)
    }

    /// Copies into `staging` what changed in `c` since it was read; returns the
    /// documents of `c` that `staging` now mirrors.
    async fn carry_over(
        &self,
        c: &Arc<dyn StoredCollection>,
        staging: &Arc<dyn StoredCollection>,
        a: &Arc<aside_adapters::Adapter>,
    ) -> Result<HashMap<String, Doc>> {
        loop {
            let now: HashMap<String, Doc> = c
                .documents()
                .await?
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect();
            let staged: HashMap<String, Doc> = staging
                .documents()
                .await?
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect();
            let (changed, gone) = diff(&now, &staged);
            if changed.is_empty() && gone.is_empty() {
                return Ok(now);
            }
            self.embed_into(staging, changed, a, gone).await?;
        }
    }
}

/// Documents of `now` that differ from `before` (text or metadata), and ids of
/// `before` that `now` lacks.
fn diff(now: &HashMap<String, Doc>, before: &HashMap<String, Doc>) -> (Vec<Doc>, Vec<String>) {
    let changed = now
        .values()
        .filter(|d| {
            before
                .get(&d.id)
                .is_none_or(|x| x.text != d.text || x.metadata != d.metadata)
        })
        .cloned()
        .collect();
    let gone = before
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    (changed, gone)
}
