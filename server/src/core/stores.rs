//! The stores a server's collections live in: the embedded engine always, a Milvus
//! cluster when `--milvus-url` is given. A collection is found by name in either;
//! a name is unique across both.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aside_index::milvus::MilvusStore;
use aside_index::{Index, IndexError, Store, StoreKind, StoredCollection};

use super::{Error, Result};

pub struct Stores {
    pub local: Arc<Index>,
    pub milvus: Option<Arc<MilvusStore>>,
    /// Where a collection goes when its creation names no store (--store).
    pub default: StoreKind,
    /// Lock files of re-embedding leases (a directory every replica shares).
    lease_dir: PathBuf,
    /// Milvus collections at the last listing (for `/info`).
    milvus_count: AtomicUsize,
}

/// The right to re-embed one collection, held until dropped. A file lock on the
/// shared data directory: the kernel releases it when its holder dies, so another
/// replica takes the job over.
pub struct Lease {
    _file: File,
}

impl Stores {
    pub fn new(
        local: Arc<Index>,
        milvus: Option<Arc<MilvusStore>>,
        default: StoreKind,
        lease_dir: PathBuf,
    ) -> Self {
        Stores {
            local,
            milvus,
            default,
            lease_dir,
            milvus_count: AtomicUsize::new(0),
        }
    }

    /// The store of that kind; Milvus only when configured.
    pub fn store(&self, kind: StoreKind) -> Result<Arc<dyn Store>> {
        match kind {
            StoreKind::Local => Ok(Arc::new(self.local.clone())),
            StoreKind::Milvus => match &self.milvus {
                Some(m) => Ok(Arc::new(m.clone())),
                None => Err(Error::invalid(
                    "store",
                    "this server has no Milvus store (start it with --milvus-url)",
                )),
            },
        }
    }

    fn all(&self) -> Vec<Arc<dyn Store>> {
        let mut v: Vec<Arc<dyn Store>> = vec![Arc::new(self.local.clone())];
        if let Some(m) = &self.milvus {
            v.push(Arc::new(m.clone()));
        }
        v
    }

    /// The collection as it is now, in whichever store holds it.
    pub async fn open(&self, name: &str) -> Result<Arc<dyn StoredCollection>> {
        if let Some(why) = self.local.failed().get(name) {
            return Err(Error::Unavailable {
                reason: format!("collection `{name}` could not be opened: {why}"),
            });
        }
        for s in self.all() {
            match s.open(name).await {
                Ok(c) => return Ok(c),
                Err(IndexError::UnknownCollection(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IndexError::UnknownCollection(name.to_owned()).into())
    }

    /// The store that holds `name`.
    pub async fn store_of(&self, name: &str) -> Result<Arc<dyn Store>> {
        let c = self.open(name).await?;
        self.store(c.kind())
    }

    /// Every collection of every store, by name.
    pub async fn list(&self) -> Result<Vec<Arc<dyn StoredCollection>>> {
        let mut out = Vec::new();
        for s in self.all() {
            let l = s.list().await?;
            if s.kind() == StoreKind::Milvus {
                self.milvus_count.store(l.len(), Ordering::Relaxed);
            }
            out.extend(l);
        }
        out.sort_by(|a, b| a.config().name.cmp(&b.config().name));
        Ok(out)
    }

    /// Collections at hand: the local ones and Milvus's at the last listing.
    pub fn count(&self) -> usize {
        Index::list(&self.local).len() + self.milvus_count.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> BTreeMap<String, String> {
        self.local.failed().clone()
    }

    /// Why the Milvus store does not answer, if it is configured and does not.
    pub async fn unreachable(&self) -> Option<String> {
        let m = self.milvus.as_ref()?;
        // One call (the aliases), not a description of every collection: /ready is
        // probed often.
        match m.names().await {
            Ok(l) => {
                self.milvus_count.store(l.len(), Ordering::Relaxed);
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// Takes the re-embedding lease of `name` unless another process holds it.
    pub fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        std::fs::create_dir_all(&self.lease_dir)
            .map_err(|e| Error::Internal(format!("{}: {e}", self.lease_dir.display())))?;
        let path = self
            .lease_dir
            .join(format!("{}.lock", hex::encode(name.as_bytes())));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lease { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::Internal(format!("locking {}: {e}", path.display())))
            }
        }
    }
}
