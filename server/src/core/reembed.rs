//! The background re-embedding that follows an adapter update: every collection
//! using the adapter is copied into a staging collection with vectors from the new
//! version, then promoted in one step. Searches keep the old vectors and version
//! until the switch; document writes answer 409 meanwhile.

use std::collections::HashMap;

use aside_index::Doc;

use super::batcher::Text;
use super::types::Reembed;
use super::{blocking, Core, Result, Shared};

impl Core {
    pub(crate) fn reembed_job(&self, name: &str) -> Option<Reembed> {
        self.reembeds.lock().get(name).cloned()
    }

    /// Starts re-embedding every collection that uses `adapter` at an older version.
    pub fn start_reembeds(self: &Shared, adapter: &str) {
        for c in self.index.list() {
            let cfg = c.config();
            if cfg.space.adapter.as_deref() == Some(adapter) {
                self.start_reembed(&cfg.name);
            }
        }
    }

    /// Re-embeds collections left behind their adapter's current version (an upload
    /// that came before a restart).
    pub fn resume_reembeds(self: &Shared) {
        for c in self.index.list() {
            if let Some(adapter) = c.config().space.adapter {
                self.start_reembeds(&adapter);
            }
        }
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
        staging: &std::sync::Arc<aside_index::Collection>,
        docs: Vec<Doc>,
        adapter: &std::sync::Arc<aside_adapters::Adapter>,
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
        let st = staging.clone();
        blocking(move || {
            if !batch.is_empty() {
                st.upsert(batch)?;
            }
            if !gone.is_empty() {
                st.delete(&gone)?;
            }
            Ok(())
        })
        .await?;
        Ok(n)
    }

    /// One pass: Ok(true) when it switched the collection to a new version, Ok(false)
    /// when it was already current.
    async fn reembed_once(&self, name: &str) -> Result<bool> {
        let c = self.index.get(name)?;
        let cfg = c.config();
        let Some(adapter) = cfg.space.adapter.clone() else {
            return Ok(false);
        };
        let (info, a) = self.registry.get(&adapter)?;
        if cfg.space.adapter_version.as_deref() == Some(info.version.as_str()) {
            return Ok(false);
        }
        let docs = c.documents();
        self.progress(name, |j| {
            j.target_version = info.version.clone();
            j.total = docs.len();
            j.done = 0;
        });
        tracing::info!(collection = name, version = %info.version, docs = docs.len(), "re-embedding");
        let mut new_cfg = cfg.clone();
        new_cfg.space.adapter_version = Some(info.version.clone());
        let index = self.index.clone();
        let staging = blocking(move || Ok(index.create_staging(new_cfg)?)).await?;
        for chunk in docs.chunks(64) {
            let n = self
                .embed_into(&staging, chunk.to_vec(), &a, Vec::new())
                .await?;
            self.progress(name, |j| j.done += n);
        }
        // Writes are refused while the job runs, but one accepted just before it
        // started may land in the old collection after the copy: carry it over.
        loop {
            let now: HashMap<String, Doc> = c
                .documents()
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect();
            let staged: HashMap<String, Doc> = staging
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
            self.embed_into(&staging, changed, &a, gone).await?;
        }
        let index = self.index.clone();
        let n = name.to_owned();
        blocking(move || Ok(index.promote(&n, staging)?)).await?;
        tracing::info!(collection = name, version = %info.version, "re-embedded and switched");
        Ok(true)
    }
}
