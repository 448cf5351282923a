//! Adapters: upload (native file or PEFT folder), list, describe, delete. A new
//! version of an adapter that collections use starts their re-embedding.

use aside_adapters::{format, peft, Dims, PutOutcome};

use super::types::{
    AdapterDeleted, AdapterDetails, AdapterInfo, AdapterList, AdapterUpload, CacheStats,
    PutAdapterResponse,
};
use super::{blocking, Error, Result, Shared};

impl super::Core {
    /// Stores a new version (201) or finds identical bytes current (200).
    pub async fn put_adapter(
        self: &Shared,
        name: &str,
        upload: AdapterUpload,
    ) -> Result<PutAdapterResponse> {
        aside_adapters::registry::check_name(name)?;
        let bytes = match upload {
            AdapterUpload::Native(b) => b,
            AdapterUpload::Peft { config, weights } => {
                let dims = Dims::of(&self.backbone);
                let sha = self.backbone.sha256().to_owned();
                let limit = self.limits.adapter_body_limit as u64;
                blocking(move || {
                    let a = peft::convert_bounded(&config, &weights, &dims, limit)?;
                    let mut meta = a.meta().clone();
                    meta.backbone = Some(sha);
                    Ok(format::write_tensors(&meta.to_map(), a.tensors())?)
                })
                .await?
            }
        };
        if bytes.is_empty() {
            return Err(Error::invalid("file", "empty: send the adapter file"));
        }
        let reg = self.registry.clone();
        let n = name.to_owned();
        let outcome = blocking(move || Ok(reg.put(&n, &bytes)?)).await?;
        let (created, info) = match outcome {
            PutOutcome::Created(i) => (true, i),
            PutOutcome::Unchanged(i) => (false, i),
        };
        if created {
            self.start_reembeds(name).await;
        }
        Ok(PutAdapterResponse {
            info: info.into(),
            created,
        })
    }

    pub fn list_adapters(&self) -> AdapterList {
        let s = self.registry.stats();
        AdapterList {
            adapters: self.registry.list().into_iter().map(Into::into).collect(),
            cache: CacheStats {
                hits: s.hits,
                misses: s.misses,
                loads: s.loads,
                evictions: s.evictions,
                resident: s.resident,
                resident_bytes: s.resident_bytes,
            },
        }
    }

    pub fn get_adapter(&self, name: &str) -> Result<AdapterDetails> {
        let current: AdapterInfo = self.registry.current_info(name)?.into();
        let versions = self
            .registry
            .versions(name)?
            .into_iter()
            .map(|v| v.version)
            .collect();
        Ok(AdapterDetails { current, versions })
    }

    /// Deletes every version; refused while a collection uses the adapter.
    pub async fn delete_adapter(&self, name: &str) -> Result<AdapterDeleted> {
        let _use = self.adapter_use.lock().await;
        let users: Vec<String> = self
            .stores
            .list()
            .await?
            .into_iter()
            .map(|c| c.config().clone())
            .filter(|c| c.space.adapter.as_deref() == Some(name))
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "adapter `{name}` is used by collection(s) {}; delete them first",
                users.join(", ")
            )));
        }
        let reg = self.registry.clone();
        let n = name.to_owned();
        let info = blocking(move || Ok(reg.delete(&n)?)).await?;
        Ok(AdapterDeleted {
            deleted: info.name,
            version: info.version,
        })
    }
}
