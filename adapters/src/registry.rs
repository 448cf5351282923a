//! The registry: named adapters with content-addressed versions, an on-disk store
//! the server reloads at start, atomic swap of a name's current version, and an LRU
//! of resident adapters under a memory budget.
//!
//! ```text
//! {root}/FORMAT                        "aside-adapter-store 1"
//! {root}/{name}/{sha256}.safetensors   every version, as uploaded (native form)
//! {root}/{name}/current                the current version's sha256
//! ```
//! Every write is temp file + fsync + rename + directory fsync. A request takes an
//! `Arc<Adapter>` once and keeps it: a swap never changes a request in flight.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::adapter::Adapter;
use crate::error::{io_err, AdapterError, Result};
use crate::format::{read_adapter, DEFAULT_MAX_FILE_BYTES};
use crate::layout::Dims;

const STORE_FORMAT: &str = "aside-adapter-store 1";

/// Names of the store's own files beside the adapters' folders: no adapter may
/// take them.
const RESERVED: [&str; 1] = ["FORMAT"];

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Largest adapter file accepted.
    pub max_file_bytes: u64,
    /// Bytes of adapter tensors kept resident; least recently used ones are evicted
    /// and reloaded from disk on their next use.
    pub memory_budget_bytes: usize,
    /// Other processes write the same store (replicas on one shared directory): a
    /// name or version this process does not know is looked for on disk, and
    /// [`Registry::refresh`] picks up their changes.
    pub shared: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            memory_budget_bytes: 1 << 30,
            shared: false,
        }
    }
}

/// What `GET /v1/adapters` shows of one adapter version.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ar: Option<usize>,
    pub activation: String,
    pub params: usize,
    /// Parameters as a percentage of the backbone's.
    pub params_percent: f64,
    pub size_bytes: u64,
}

/// The result of putting a file under a name.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// A new version became current.
    Created(AdapterInfo),
    /// The same bytes were already the current version.
    Unchanged(AdapterInfo),
}

impl PutOutcome {
    pub fn info(&self) -> &AdapterInfo {
        match self {
            PutOutcome::Created(i) | PutOutcome::Unchanged(i) => i,
        }
    }
}

/// Cache counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RegistryStats {
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub evictions: u64,
    pub resident: usize,
    pub resident_bytes: usize,
}

#[derive(Debug, Clone)]
struct NameState {
    current: String,
    versions: BTreeMap<String, AdapterInfo>,
}

#[derive(Default)]
struct Lru {
    map: HashMap<(String, String), (Arc<Adapter>, u64)>,
    bytes: usize,
    tick: u64,
}

/// Named adapters for one backbone.
pub struct Registry {
    root: PathBuf,
    dims: Dims,
    opts: RegistryOptions,
    names: RwLock<BTreeMap<String, NameState>>,
    cache: Mutex<Lru>,
    writer: Mutex<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Checks an adapter name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    Ok(aside_common::check_name(name)?)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(aside_common::write_atomic(path, bytes)?)
}

fn sync_dir(dir: &Path) -> Result<()> {
    Ok(aside_common::sync_dir(dir)?)
}

impl Registry {
    /// Opens (or creates) the store under `root` and indexes every stored version.
    /// Unreadable versions are skipped and reported in [`Registry::warnings`].
    pub fn open(root: &Path, dims: Dims, opts: RegistryOptions) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let fmt = root.join("FORMAT");
        match std::fs::read_to_string(&fmt) {
            Ok(s) if s.trim() == STORE_FORMAT => {}
            Ok(s) => {
                return Err(AdapterError::Store(format!(
                    "{} says `{}`; this server reads `{STORE_FORMAT}`",
                    fmt.display(),
                    s.trim()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&fmt, STORE_FORMAT.as_bytes())?
            }
            Err(e) => return Err(io_err(&fmt)(e)),
        }
        let mut reg = Registry {
            root: root.to_owned(),
            dims,
            opts,
            names: RwLock::new(BTreeMap::new()),
            cache: Mutex::new(Lru::default()),
            writer: Mutex::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            warnings: Vec::new(),
        };
        let mut names = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(root)
            .map_err(io_err(root))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.starts_with('.') {
                // Left-overs of an interrupted delete.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() || check_name(&name).is_err() {
                continue;
            }
            let mut warnings = std::mem::take(&mut reg.warnings);
            match reg.index_name(&name, &path, None, &mut warnings) {
                Ok(Some(state)) => {
                    names.insert(name, state);
                }
                Ok(None) => {}
                Err(err) => warnings.push(format!("adapter `{name}` skipped: {err}")),
            }
            reg.warnings = warnings;
        }
        *reg.names.get_mut() = names;
        Ok(reg)
    }

    /// Re-reads the store's names and versions from disk: what other processes on
    /// the same directory added, switched or deleted. Versions already known are
    /// not read again.
    pub fn refresh(&self) -> Result<()> {
        let _w = self.writer.lock();
        let mut fresh = BTreeMap::new();
        let entries: Vec<_> = std::fs::read_dir(&self.root)
            .map_err(io_err(&self.root))?
            .filter_map(|e| e.ok())
            .collect();
        let mut warnings = Vec::new();
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.starts_with('.') || !path.is_dir() || check_name(&name).is_err() {
                continue;
            }
            let known = self.names.read().get(&name).cloned();
            match self.index_name(&name, &path, known.as_ref(), &mut warnings) {
                Ok(Some(state)) => {
                    fresh.insert(name, state);
                }
                Ok(None) => {}
                // Mid-write by another process, say: keep what we knew.
                Err(_) => {
                    if let Some(k) = known {
                        fresh.insert(name, k);
                    }
                }
            }
        }
        let gone: Vec<String> = {
            let mut names = self.names.write();
            let gone = names
                .keys()
                .filter(|n| !fresh.contains_key(*n))
                .cloned()
                .collect();
            *names = fresh;
            gone
        };
        if !gone.is_empty() {
            let mut c = self.cache.lock();
            let keys: Vec<_> = c
                .map
                .keys()
                .filter(|(n, _)| gone.contains(n))
                .cloned()
                .collect();
            for k in keys {
                if let Some((a, _)) = c.map.remove(&k) {
                    c.bytes -= a.size_bytes();
                }
            }
        }
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(())
    }

    fn index_name(
        &self,
        name: &str,
        dir: &Path,
        known: Option<&NameState>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<NameState>> {
        let cur_path = dir.join("current");
        let current = match std::fs::read_to_string(&cur_path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&cur_path)(e)),
        };
        let mut versions = BTreeMap::new();
        for e in std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
        {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(version) = file.strip_suffix(".safetensors") else {
                continue;
            };
            if let Some(info) = known.and_then(|k| k.versions.get(version)) {
                versions.insert(version.to_owned(), info.clone());
                continue;
            }
            let bytes = std::fs::read(e.path()).map_err(io_err(&e.path()))?;
            if sha256_hex(&bytes) != version {
                warnings.push(format!(
                    "adapter `{name}` version {version}: content does not match its sha256; skipped"
                ));
                continue;
            }
            match read_adapter(&bytes, &self.dims, self.opts.max_file_bytes) {
                Ok(a) => {
                    versions.insert(
                        version.to_owned(),
                        self.info(name, version, &a, bytes.len()),
                    );
                }
                Err(err) => {
                    warnings.push(format!("adapter `{name}` version {version} skipped: {err}"))
                }
            }
        }
        if !versions.contains_key(&current) {
            return Err(AdapterError::Store(format!(
                "current version {current} is missing or unreadable"
            )));
        }
        Ok(Some(NameState { current, versions }))
    }

    fn info(&self, name: &str, version: &str, a: &Adapter, size: usize) -> AdapterInfo {
        let m = a.meta();
        AdapterInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            kind: m.kind.to_string(),
            task: m.task.to_string(),
            r: m.r,
            ar: m.ar,
            activation: m.activation.name().to_owned(),
            params: a.param_count(),
            params_percent: 100.0 * a.param_count() as f64
                / self.dims.backbone_params.max(1) as f64,
            size_bytes: size as u64,
        }
    }

    /// Problems found while opening the store (skipped versions).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// Validates a native adapter file completely, without storing it.
    pub fn validate(&self, bytes: &[u8]) -> Result<Adapter> {
        read_adapter(bytes, &self.dims, self.opts.max_file_bytes)
    }

    /// Stores `bytes` as a version of `name` and makes it current. A file that fails
    /// validation changes nothing; the same bytes again answer `Unchanged`.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<PutOutcome> {
        check_name(name)?;
        if RESERVED.contains(&name) {
            return Err(AdapterError::ReservedName(name.to_owned()));
        }
        let adapter = self.validate(bytes)?;
        let version = sha256_hex(bytes);
        let _w = self.writer.lock();
        if let Some(state) = self.names.read().get(name) {
            if state.current == version {
                return Ok(PutOutcome::Unchanged(state.versions[&version].clone()));
            }
            // A new version serves the same task: collections re-embed with it.
            let current = &state.versions[&state.current].task;
            let new = adapter.task().to_string();
            if *current != new {
                return Err(AdapterError::TaskChange {
                    name: name.to_owned(),
                    current: current.clone(),
                    new,
                });
            }
        }
        let dir = self.root.join(name);
        let created_dir = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if created_dir {
            sync_dir(&self.root)?;
        }
        let file = dir.join(format!("{version}.safetensors"));
        if !file.exists() {
            write_atomic(&file, bytes)?;
        }
        write_atomic(&dir.join("current"), version.as_bytes())?;
        let info = self.info(name, &version, &adapter, bytes.len());
        self.insert_cache(name, &version, Arc::new(adapter));
        let mut names = self.names.write();
        let state = names.entry(name.to_owned()).or_insert_with(|| NameState {
            current: version.clone(),
            versions: BTreeMap::new(),
        });
        state.versions.insert(version.clone(), info.clone());
        state.current = version;
        Ok(PutOutcome::Created(info))
    }

    /// Removes a name and all its versions.
    pub fn delete(&self, name: &str) -> Result<AdapterInfo> {
        check_name(name)?;
        let _w = self.writer.lock();
        let info = self.current_info(name)?;
        let dir = self.root.join(name);
        let trash = self.root.join(format!(
            ".deleted-{name}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        sync_dir(&self.root)?;
        let _ = std::fs::remove_dir_all(&trash);
        self.names.write().remove(name);
        let mut c = self.cache.lock();
        let keys: Vec<_> = c.map.keys().filter(|(n, _)| n == name).cloned().collect();
        for k in keys {
            if let Some((a, _)) = c.map.remove(&k) {
                c.bytes -= a.size_bytes();
            }
        }
        Ok(info)
    }

    /// The current version's description.
    pub fn current_info(&self, name: &str) -> Result<AdapterInfo> {
        if self.opts.shared && !self.names.read().contains_key(name) {
            self.refresh()?;
        }
        let names = self.names.read();
        let s = names
            .get(name)
            .ok_or_else(|| AdapterError::NotFound(name.to_owned()))?;
        Ok(s.versions[&s.current].clone())
    }

    /// Every name's current version.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.names
            .read()
            .values()
            .map(|s| s.versions[&s.current].clone())
            .collect()
    }

    /// Every stored version of a name.
    pub fn versions(&self, name: &str) -> Result<Vec<AdapterInfo>> {
        let names = self.names.read();
        let s = names
            .get(name)
            .ok_or_else(|| AdapterError::NotFound(name.to_owned()))?;
        Ok(s.versions.values().cloned().collect())
    }

    /// The current version of `name`, pinned: the caller keeps this `Arc` for the
    /// whole request.
    pub fn get(&self, name: &str) -> Result<(AdapterInfo, Arc<Adapter>)> {
        let info = self.current_info(name)?;
        let a = self.get_version(name, &info.version)?;
        Ok((info, a))
    }

    /// A specific version of `name` (loaded from disk if not resident).
    pub fn get_version(&self, name: &str, version: &str) -> Result<Arc<Adapter>> {
        {
            let mut c = self.cache.lock();
            c.tick += 1;
            let tick = c.tick;
            if let Some((a, t)) = c.map.get_mut(&(name.to_owned(), version.to_owned())) {
                *t = tick;
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(a.clone());
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let has = |reg: &Self| {
            reg.names
                .read()
                .get(name)
                .is_some_and(|s| s.versions.contains_key(version))
        };
        if self.opts.shared && !has(self) {
            self.refresh()?;
        }
        let known = self
            .names
            .read()
            .get(name)
            .map(|s| s.versions.contains_key(version));
        match known {
            None => return Err(AdapterError::NotFound(name.to_owned())),
            Some(false) => {
                return Err(AdapterError::VersionNotFound {
                    name: name.to_owned(),
                    version: version.to_owned(),
                })
            }
            Some(true) => {}
        }
        let path = self.root.join(name).join(format!("{version}.safetensors"));
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let a = Arc::new(read_adapter(&bytes, &self.dims, self.opts.max_file_bytes)?);
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.insert_cache(name, version, a.clone());
        Ok(a)
    }

    fn insert_cache(&self, name: &str, version: &str, a: Arc<Adapter>) {
        let mut c = self.cache.lock();
        c.tick += 1;
        let tick = c.tick;
        let key = (name.to_owned(), version.to_owned());
        c.bytes += a.size_bytes();
        if let Some((old, _)) = c.map.insert(key.clone(), (a, tick)) {
            c.bytes -= old.size_bytes();
        }
        while c.bytes > self.opts.memory_budget_bytes && c.map.len() > 1 {
            let victim = c
                .map
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some((old, _)) = c.map.remove(&victim) {
                c.bytes -= old.size_bytes();
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> RegistryStats {
        let c = self.cache.lock();
        RegistryStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            resident: c.map.len(),
            resident_bytes: c.bytes,
        }
    }
}
