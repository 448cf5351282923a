//! One collection: documents (id → vector, text, metadata), an HNSW graph over their
//! vectors with tombstones for replaced and deleted ones, the write-ahead log and
//! snapshots. Readers share the state; writers are serialised by `writer`.
//!
//! A write is acknowledged once its log record is on disk; the graph is filled behind
//! it by a background indexer. Slots the graph does not hold yet (the tail) are
//! searched exactly, so an acknowledged write is found by the next search.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{io_err, IndexError, Result};
use crate::filter::Filter;
use crate::graph::Graph;
use crate::hnswrs::HnswRs;
use crate::lexical::{self, LexOp, Lexical, LexicalSettings};
use crate::metric::Metric;
use crate::snapshot;
use crate::wal::{self, Doc, Op, Wal};

/// Below this many live documents a search is exact (brute force).
pub const EXACT_BELOW: usize = 2000;
/// The log is folded into a snapshot once its segment passes this size.
pub const SNAPSHOT_BYTES: u64 = 64 << 20;
/// Writers wait while more slots than this are waiting for the graph.
pub const MAX_UNINDEXED: usize = 16_384;
/// Slots the indexer inserts per turn; writers wait for at most one turn.
const INDEX_BATCH: usize = 16;
const MANIFEST_VERSION: u32 = 1;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node on the upper layers (twice this on layer 0), 2..=256.
    pub m: usize,
    pub ef_construction: usize,
    /// Default search breadth; a search may ask for its own.
    pub ef: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            ef: 64,
        }
    }
}

/// The graph a local collection searches: ours, or the hnsw_rs crate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Our graph (`graph.rs`).
    #[default]
    Graph,
    /// The hnsw_rs crate (`hnswrs.rs`).
    HnswRs,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "graph" => Ok(Engine::Graph),
            "hnsw_rs" => Ok(Engine::HnswRs),
            _ => Err(format!("unknown engine `{s}` (expected graph or hnsw_rs)")),
        }
    }
}

/// The embedding space the vectors were made in: nobody may search them with a
/// query vector from another space.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Space {
    /// sha256 of the backbone weights.
    pub backbone: String,
    /// Adapter name and version (content sha256); none for the bare backbone.
    pub adapter: Option<String>,
    pub adapter_version: Option<String>,
}

/// What a collection is, as stored in its `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionConfig {
    pub name: String,
    pub dim: usize,
    pub metric: Metric,
    pub hnsw: HnswParams,
    pub space: Space,
    /// The graph engine (manifests written before engines existed: ours).
    #[serde(default)]
    pub engine: Engine,
    /// The lexical (BM25) index's analyzer; none: no lexical index (and manifests
    /// written before lexical search existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<LexicalSettings>,
}

impl CollectionConfig {
    pub fn validate(&self) -> Result<()> {
        crate::check_name(&self.name)?;
        let bad = |m: String| Err(IndexError::BadConfig(m));
        if self.dim == 0 || self.dim > 65536 {
            return bad(format!("dimension {} is out of range 1..=65536", self.dim));
        }
        if !(2..=256).contains(&self.hnsw.m) {
            return bad(format!("hnsw.m {} is out of range 2..=256", self.hnsw.m));
        }
        if !(1..=4096).contains(&self.hnsw.ef_construction) {
            return bad(format!(
                "hnsw.ef_construction {} is out of range 1..=4096",
                self.hnsw.ef_construction
            ));
        }
        if !(1..=4096).contains(&self.hnsw.ef) {
            return bad(format!("hnsw.ef {} is out of range 1..=4096", self.hnsw.ef));
        }
        if let Some(l) = &self.lexical {
            l.validate()?;
        }
        if self.engine == Engine::HnswRs && !crate::hnswrs::supports(self.metric) {
            return bad(format!(
                "the hnsw_rs engine orders by cosine or l2; its dot-product distance needs unit vectors (metric {:?})",
                self.metric
            ));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format_version: u32,
    #[serde(flatten)]
    config: CollectionConfig,
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest<'a> {
    pub vector: &'a [f32],
    pub k: usize,
    pub ef: Option<usize>,
    pub filter: Option<&'a Filter>,
    /// Drop hits scoring below this.
    pub threshold: Option<f32>,
    /// Brute force instead of the graph.
    pub exact: bool,
}

/// A lexical (BM25) search.
#[derive(Debug, Clone)]
pub struct LexicalRequest<'a> {
    pub text: &'a str,
    pub k: usize,
    pub filter: Option<&'a Filter>,
    /// Drop hits whose BM25 score is below this.
    pub threshold: Option<f32>,
}

/// One result, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub text: String,
    pub metadata: Value,
}

/// Counts of a collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub count: usize,
    pub tombstones: usize,
    /// Slots written but not in the graph yet (searched exactly meanwhile).
    pub unindexed: usize,
    pub wal_bytes: u64,
}

/// The graph behind a collection: one seam, two engines.
enum Ann {
    Graph(Graph),
    HnswRs(HnswRs),
}

impl Ann {
    fn new(cfg: &CollectionConfig, capacity: usize) -> Self {
        match cfg.engine {
            Engine::Graph => Ann::Graph(Graph::new(
                cfg.dim,
                cfg.metric,
                cfg.hnsw.m,
                cfg.hnsw.ef_construction,
            )),
            Engine::HnswRs => Ann::HnswRs(HnswRs::new(
                cfg.metric,
                cfg.hnsw.m,
                cfg.hnsw.ef_construction,
                capacity,
            )),
        }
    }

    fn reserve(&mut self, nodes: usize) {
        if let Ann::Graph(g) = self {
            g.reserve(nodes)
        }
    }

    fn insert(&self, vectors: &[f32], dim: usize, node: u32) {
        match self {
            Ann::Graph(g) => g.insert(vectors, node),
            Ann::HnswRs(h) => h.insert(vectors, dim, node),
        }
    }

    /// (score, slot) of the `k` nearest accepted slots.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        st_vector: &dyn Fn(usize) -> f32,
        vectors: &[f32],
        metric: Metric,
        q: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<(f32, usize)> {
        match self {
            Ann::Graph(g) => g
                .search(vectors, q, k, ef, filter)
                .into_iter()
                .map(|n| (metric.score_of_distance(n.d), n.n as usize))
                .collect(),
            Ann::HnswRs(h) => h
                .search(q, k, ef, filter)
                .into_iter()
                .map(|n| (st_vector(n as usize), n as usize))
                .collect(),
        }
    }

    fn encode(&self, nodes: usize, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Ann::Graph(g) => {
                g.encode(nodes, out);
                Ok(())
            }
            Ann::HnswRs(h) => h.encode(out),
        }
    }

    fn decode(
        &mut self,
        r: &mut wal::Reader<'_>,
        nodes: usize,
        cfg: &CollectionConfig,
    ) -> Result<()> {
        match self {
            Ann::Graph(g) => g.decode(r, nodes),
            Ann::HnswRs(h) => {
                *h = HnswRs::decode(r, cfg.metric, cfg.hnsw.m, cfg.hnsw.ef_construction)?;
                Ok(())
            }
        }
    }
}

struct Entry {
    slot: usize,
    /// The lexical key of this version (0 without a lexical index).
    key: u64,
    text: String,
    metadata: Value,
}

struct State {
    docs: HashMap<String, Entry>,
    /// Slot → document id; `None` is a tombstone (its vector stays for the graph).
    ids: Vec<Option<String>>,
    /// Slot vectors, `dim` floats each, as stored (normalised for cosine).
    vectors: Vec<f32>,
    dim: usize,
    graph: Ann,
    /// Slots below this are in the graph; advanced by the indexer.
    indexed: AtomicUsize,
    tombstones: usize,
    /// With a lexical index: the live documents' lexical keys → slot.
    lexical: bool,
    lex_keys: crate::lexical::KeyMap<usize>,
}

struct Writer {
    wal: Arc<Wal>,
    gen: u64,
}

pub struct Collection {
    /// This process's hold on the directory ([`lock_dir`]), released when its last
    /// handle is dropped or the process ends.
    _lock: Arc<DirLock>,
    dir: PathBuf,
    config: RwLock<CollectionConfig>,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    /// Held by the indexer for each turn, and by snapshots and compaction, which need
    /// the graph still.
    indexing: Mutex<()>,
    indexer_running: AtomicBool,
    /// Signalled after each indexer turn (for writers held back and `wait_indexed`).
    progress: (Mutex<()>, Condvar),
    compacting: AtomicBool,
    warnings: Vec<String>,
    /// What opening found lost (corrupt log records skipped).
    damage: Vec<String>,
    /// The BM25 index (collections with `lexical` settings, except staging copies).
    lexical: Option<Lexical>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

impl State {
    fn empty(cfg: &CollectionConfig) -> Self {
        State {
            docs: HashMap::new(),
            ids: Vec::new(),
            vectors: Vec::new(),
            dim: cfg.dim,
            graph: Ann::new(cfg, 0),
            indexed: AtomicUsize::new(0),
            tombstones: 0,
            lexical: cfg.lexical.is_some(),
            lex_keys: Default::default(),
        }
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..][..self.dim]
    }

    /// Adds a slot; the lexical changes it makes go to `lex`.
    fn push(&mut self, d: Doc, lex: &mut Vec<LexOp>) {
        let slot = self.ids.len();
        self.vectors.extend_from_slice(&d.vector);
        if d.id.is_empty() {
            self.ids.push(None);
            self.tombstones += 1;
        } else {
            self.ids.push(Some(d.id.clone()));
            let key = if self.lexical {
                lexical::key(&d.id, &d.text)
            } else {
                0
            };
            let text = self.lexical.then(|| d.text.clone());
            let e = Entry {
                slot,
                key,
                text: d.text,
                metadata: d.metadata,
            };
            let old = self.docs.insert(d.id, e);
            if let Some(old) = &old {
                self.ids[old.slot] = None;
                self.tombstones += 1;
            }
            if let Some(text) = text {
                match old {
                    // The same text again: the indexed version stays.
                    Some(o) if o.key == key => {}
                    o => {
                        if let Some(o) = o {
                            self.lex_keys.remove(&o.key);
                            lex.push(LexOp::Delete(o.key));
                        }
                        lex.push(LexOp::Add { key, text });
                    }
                }
                self.lex_keys.insert(key, slot);
            }
        }
    }

    /// Applies a change to the maps; new slots join the tail for the indexer. Returns
    /// the changes the lexical index has to follow.
    fn apply(&mut self, op: Op) -> Vec<LexOp> {
        let mut lex = Vec::new();
        match op {
            Op::Upsert(docs) => {
                self.graph.reserve(self.ids.len() + docs.len());
                docs.into_iter().for_each(|d| self.push(d, &mut lex));
            }
            Op::Delete(ids) => {
                for id in ids {
                    if let Some(old) = self.docs.remove(&id) {
                        self.ids[old.slot] = None;
                        self.tombstones += 1;
                        if self.lexical {
                            self.lex_keys.remove(&old.key);
                            lex.push(LexOp::Delete(old.key));
                        }
                    }
                }
            }
        }
        lex
    }

    /// (score, live slot) pairs as hits: best first (ties by id), the best `k`, those
    /// below `threshold` left out.
    fn hits(&self, mut scored: Vec<(f32, usize)>, k: usize, threshold: Option<f32>) -> Vec<Hit> {
        let id_of = |s: usize| self.ids[s].as_ref().expect("live");
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| id_of(a.1).cmp(id_of(b.1))));
        scored.truncate(k);
        scored
            .into_iter()
            .filter(|(score, _)| threshold.is_none_or(|t| *score >= t))
            .map(|(score, s)| {
                let id = id_of(s).clone();
                let e = &self.docs[&id];
                Hit {
                    score,
                    text: e.text.clone(),
                    metadata: e.metadata.clone(),
                    id,
                }
            })
            .collect()
    }

    /// The live documents as (lexical key, text).
    fn lexical_docs(&self) -> impl Iterator<Item = (u64, &str)> {
        self.docs.values().map(|e| (e.key, e.text.as_str()))
    }

    fn unindexed(&self) -> usize {
        self.ids.len() - self.indexed.load(Ordering::Acquire)
    }

    /// Inserts the live slots of `from..to` into the graph, in parallel.
    fn index(&self, from: usize, to: usize) {
        let nodes: Vec<u32> = (from..to)
            .filter(|&s| self.ids[s].is_some())
            .map(|s| s as u32)
            .collect();
        nodes
            .par_iter()
            .with_min_len(8)
            .for_each(|&n| self.graph.insert(&self.vectors, self.dim, n));
        self.indexed.store(to, Ordering::Release);
    }

    /// Loads a snapshot: its slots, and its graph when it has one.
    fn from_snapshot(cfg: &CollectionConfig, snap: snapshot::Snapshot) -> Result<Self> {
        let mut st = State::empty(cfg);
        st.graph = Ann::new(cfg, snap.slots.len());
        st.graph.reserve(snap.slots.len());
        for d in snap.slots {
            if d.vector.len() != cfg.dim {
                return Err(IndexError::Corrupt(format!(
                    "slot {} has dimension {}, the collection's is {}",
                    st.ids.len(),
                    d.vector.len(),
                    cfg.dim
                )));
            }
            st.push(d, &mut Vec::new());
        }
        if let Some(links) = &snap.links {
            let mut r = wal::Reader::new(links);
            st.graph.decode(&mut r, snap.indexed, cfg)?;
            if !r.done() {
                return Err(IndexError::Corrupt("trailing bytes after the graph".into()));
            }
        }
        st.indexed.store(snap.indexed, Ordering::Release);
        Ok(st)
    }

    /// The snapshot body: every slot, then the graph over the indexed ones.
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let none = Value::Null;
        wal::put_u32(out, self.ids.len() as u32);
        for (slot, id) in self.ids.iter().enumerate() {
            let (id, text, meta) = match id {
                Some(id) => {
                    let e = &self.docs[id];
                    (id.as_str(), e.text.as_str(), &e.metadata)
                }
                None => ("", "", &none),
            };
            wal::put_doc_parts(out, id, self.vector(slot), text, meta);
        }
        let indexed = self.indexed.load(Ordering::Acquire);
        wal::put_u32(out, indexed as u32);
        self.graph.encode(indexed, out)
    }

    fn live_docs(&self) -> Vec<Doc> {
        self.docs
            .iter()
            .map(|(id, e)| Doc {
                id: id.clone(),
                vector: self.vector(e.slot).to_vec(),
                text: e.text.clone(),
                metadata: e.metadata.clone(),
            })
            .collect()
    }

    /// The live documents in a fresh state with dense slots and a full graph.
    fn compacted(&self, cfg: &CollectionConfig) -> State {
        let mut st = State::empty(cfg);
        let live: Vec<&String> = self.ids.iter().flatten().collect();
        st.graph = Ann::new(cfg, live.len());
        st.graph.reserve(live.len());
        st.vectors.reserve(live.len() * self.dim);
        for id in live {
            let e = &self.docs[id];
            st.push(
                Doc {
                    id: id.clone(),
                    vector: self.vector(e.slot).to_vec(),
                    text: e.text.clone(),
                    metadata: e.metadata.clone(),
                },
                &mut Vec::new(),
            );
        }
        st.index(0, st.ids.len());
        st
    }
}

/// This process's hold on one collection directory: an advisory `flock` on its
/// `LOCK` file, which the kernel releases when the process ends, however it ends.
/// Every handle this process opens on the directory shares the one lock (keyed by
/// the file's device and inode, which a rename keeps), so a collection reopened
/// while an old handle lives on (a promotion, a test) is not locked out by itself;
/// another process is.
pub(crate) struct DirLock {
    key: (u64, u64),
    /// Closed (the flock let go) in `drop`, under the map's lock.
    file: Option<std::fs::File>,
}

type HeldLocks = HashMap<(u64, u64), std::sync::Weak<DirLock>>;

fn held_locks() -> &'static Mutex<HeldLocks> {
    static HELD: std::sync::OnceLock<Mutex<HeldLocks>> = std::sync::OnceLock::new();
    HELD.get_or_init(Default::default)
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // The entry goes and the file closes together, so an opener that finds no
        // entry never meets this process's own lock.
        let mut held = held_locks().lock();
        if held.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            held.remove(&self.key);
        }
        drop(self.file.take());
    }
}

/// Takes `dir/LOCK` for this process (see [`DirLock`]). Another process holding it
/// (a second server on the same data directory) gets [`IndexError::InUse`] at once
/// instead of reading a log that is being written — replay would cut the torn tail
/// of a write in flight. A hold this process is letting go right now (its last
/// handle dropped, its entry not yet gone) is waited for.
pub(crate) fn lock_dir(dir: &Path) -> Result<Arc<DirLock>> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join("LOCK");
    loop {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let meta = file.metadata().map_err(io_err(&path))?;
        let key = (meta.dev(), meta.ino());
        let mut held = held_locks().lock();
        if let Some(weak) = held.get(&key) {
            if let Some(lock) = weak.upgrade() {
                return Ok(lock);
            }
            drop(held);
            std::thread::yield_now();
            continue;
        }
        return match file.try_lock() {
            Ok(()) => {
                let lock = Arc::new(DirLock {
                    key,
                    file: Some(file),
                });
                held.insert(key, Arc::downgrade(&lock));
                Ok(lock)
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(IndexError::InUse(format!(
                "collection directory {}",
                dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(IndexError::Io { path, source: e }),
        };
    }
}

/// Whether another process holds `dir`'s LOCK right now (without waiting).
pub(crate) fn locked_elsewhere(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = std::fs::File::options().write(true).open(dir.join("LOCK")) else {
        return false;
    };
    let held = held_locks().lock();
    let ours = file.metadata().is_ok_and(|m| {
        held.get(&(m.dev(), m.ino()))
            .is_some_and(|w| w.strong_count() > 0)
    });
    !ours && matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

impl Collection {
    /// Creates a new, empty collection in `dir` (which must not exist yet).
    pub(crate) fn create(dir: &Path, config: CollectionConfig) -> Result<Arc<Self>> {
        Self::create_with(dir, config, false)
    }

    /// [`Collection::create`]; `staging`: a copy being filled by a re-embedding, which
    /// nobody searches, gets no lexical index (the original's is linked in when it is
    /// promoted).
    pub(crate) fn create_with(
        dir: &Path,
        config: CollectionConfig,
        staging: bool,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_manifest(dir, &config)?;
        Self::open_with(dir, staging)
    }

    /// Opens a collection: manifest, newest readable snapshot (slots and graph), then
    /// the log after it, then the lexical index brought up to the documents. Slots the
    /// graph does not hold are indexed in the background.
    pub(crate) fn open(dir: &Path) -> Result<Arc<Self>> {
        Self::open_with(dir, false)
    }

    fn open_with(dir: &Path, staging: bool) -> Result<Arc<Self>> {
        // First of all: reading the log may cut a torn tail, which must never be
        // another process's write in flight.
        let lock = lock_dir(dir)?;
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(io_err(&mpath))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| IndexError::Corrupt(format!("{}: {e}", mpath.display())))?;
        if m.format_version != MANIFEST_VERSION {
            return Err(IndexError::Corrupt(format!(
                "{}: format version {}, this server reads {MANIFEST_VERSION}",
                mpath.display(),
                m.format_version
            )));
        }
        let config = m.config;
        config.validate()?;
        let mut warnings = Vec::new();
        let mut state = State::empty(&config);
        let mut base = 0;
        for g in snapshot::list(dir)?.into_iter().rev() {
            let loaded = snapshot::read(&snapshot::path(dir, g))
                .and_then(|snap| State::from_snapshot(&config, snap));
            match loaded {
                Ok(st) => {
                    state = st;
                    base = g;
                    break;
                }
                Err(e) => warnings.push(format!("snapshot {g} skipped: {e}")),
            }
        }
        let segs = wal::segments(dir)?;
        let mut damage = Vec::new();
        for &g in segs.iter().filter(|&&g| g >= base) {
            let (ops, report) = wal::replay(&wal::segment_path(dir, g))?;
            if let Some(bytes) = report.torn_tail {
                warnings.push(format!(
                    "log segment {g}: a torn tail (an incomplete last record of {bytes} bytes, never acknowledged) was cut off"
                ));
            }
            for (offset, bytes) in report.skipped {
                damage.push(format!(
                    "log segment {g}: a corrupt record at byte {offset} ({bytes} bytes) was skipped; the writes it held are lost, the records after it were read"
                ));
            }
            for op in ops {
                state.apply(op);
            }
        }
        let gen = segs.last().copied().unwrap_or(base).max(base);
        let lexical = match (&config.lexical, staging) {
            (Some(l), false) => Some(Lexical::open(
                &dir.join("lexical"),
                l,
                state.lexical_docs(),
                &mut warnings,
            )?),
            _ => None,
        };
        let wal = Arc::new(Wal::open(wal::segment_path(dir, gen))?);
        let c = Arc::new(Collection {
            _lock: lock,
            dir: dir.to_owned(),
            config: RwLock::new(config),
            state: RwLock::new(state),
            writer: Mutex::new(Writer { wal, gen }),
            indexing: Mutex::new(()),
            indexer_running: AtomicBool::new(false),
            progress: (Mutex::new(()), Condvar::new()),
            compacting: AtomicBool::new(false),
            warnings,
            damage,
            lexical,
        });
        c.kick_indexer();
        Ok(c)
    }

    /// Starts the background indexer unless it runs or there is nothing to index.
    fn kick_indexer(self: &Arc<Self>) {
        // A running indexer re-checks for work before it stops; asking first would
        // make a writer wait for the lexical writer's lock through a tantivy commit.
        if self.indexer_running.load(Ordering::Acquire)
            || !self.has_work()
            || self.indexer_running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Weak while it waits for a lexical commit: a collection dropped by everybody
        // else is dropped at once (and its lexical writer's lock released).
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("aside-indexer".into())
            .spawn(move || loop {
                let Some(me) = weak.upgrade() else { return };
                if let Some(d) = me.index_tail() {
                    drop(me);
                    std::thread::sleep(d.max(Duration::from_millis(5)));
                    continue;
                }
                me.indexer_running.store(false, Ordering::Release);
                // Work that arrived after the last turn and before the flag was cleared.
                if Arc::strong_count(&me) == 1
                    || !me.has_work()
                    || me.indexer_running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            });
        if spawned.is_err() {
            self.indexer_running.store(false, Ordering::Release);
        }
    }

    /// Slots wait for the graph, or changes for the lexical index.
    fn has_work(&self) -> bool {
        self.state.read().unindexed() > 0 || self.lexical.as_ref().is_some_and(|l| l.busy())
    }

    /// Inserts the tail into the graph, a turn at a time, and hands changes to the
    /// lexical index, until neither has work (or the collection is dropped by
    /// everybody else). Returns how long to wait for a lexical commit that is due later.
    fn index_tail(self: &Arc<Self>) -> Option<Duration> {
        loop {
            if Arc::strong_count(self) == 1 {
                return None;
            }
            let graph_work = {
                let _turn = self.indexing.lock();
                let st = self.state.read();
                let from = st.indexed.load(Ordering::Acquire);
                let to = st.ids.len().min(from + INDEX_BATCH);
                if from < to {
                    st.index(from, to);
                }
                from < to
            };
            let wait = self.lexical.as_ref().and_then(|l| l.flush(!graph_work));
            if graph_work {
                let _g = self.progress.0.lock();
                self.progress.1.notify_all();
                continue;
            }
            return wait;
        }
    }

    /// Blocks until every slot written so far is in the graph.
    pub fn wait_indexed(self: &Arc<Self>) {
        loop {
            if self.state.read().unindexed() == 0 {
                return;
            }
            self.kick_indexer();
            let mut g = self.progress.0.lock();
            self.progress.1.wait_for(&mut g, Duration::from_millis(50));
        }
    }

    pub fn config(&self) -> CollectionConfig {
        self.config.read().clone()
    }

    /// Problems found while opening that lost nothing acknowledged (a snapshot
    /// skipped for the one before it, an incomplete last record cut off).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// What opening found lost: corrupt log records skipped (each named by segment
    /// and offset). Empty for a healthy collection.
    pub fn damage(&self) -> &[String] {
        &self.damage
    }

    /// Inserts or replaces documents. The whole batch is validated first (nothing is
    /// stored if any document is bad) and the call returns once it is durable.
    pub fn upsert(self: &Arc<Self>, mut docs: Vec<Doc>) -> Result<usize> {
        {
            let cfg = self.config.read();
            check_docs(&mut docs, cfg.dim, cfg.metric)?;
        }
        let n = docs.len();
        if n == 0 {
            return Ok(0);
        }
        self.write(Op::Upsert(docs))?;
        Ok(n)
    }

    /// Deletes documents by id; returns how many existed.
    pub fn delete(self: &Arc<Self>, ids: &[String]) -> Result<usize> {
        let present: Vec<String> = {
            let st = self.state.read();
            ids.iter()
                .filter(|i| st.docs.contains_key(*i))
                .cloned()
                .collect()
        };
        let n = present.len();
        if n > 0 {
            self.write(Op::Delete(present))?;
        }
        Ok(n)
    }

    fn write(self: &Arc<Self>, op: Op) -> Result<()> {
        let mut w = self.writer.lock();
        let seq = w.wal.append(&op)?;
        let wal = w.wal.clone();
        let lex = self.state.write().apply(op);
        if let Some(l) = &self.lexical {
            // Under the writer lock: the lexical index sees changes in log order.
            l.enqueue(lex);
        }
        // The write is in the log: a snapshot that fails now (a full disk) is tried
        // again after a later write and must not fail this one.
        if wal.bytes() > SNAPSHOT_BYTES {
            let _ = self.snapshot_locked(&mut w);
        }
        let (compact, backlog) = {
            let st = self.state.read();
            (
                st.tombstones > 1000 && st.tombstones > st.docs.len() / 4,
                st.unindexed(),
            )
        };
        drop(w);
        wal.sync(seq)?;
        self.kick_indexer();
        if compact && !self.compacting.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            std::thread::spawn(move || {
                me.compact();
                me.compacting.store(false, Ordering::Release);
            });
        }
        // Back-pressure: the tail is searched exactly, so it may not grow without end.
        if backlog > MAX_UNINDEXED {
            let mut g = self.progress.0.lock();
            while self.state.read().unindexed() > MAX_UNINDEXED {
                self.progress.1.wait_for(&mut g, Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Writes a snapshot (every slot and the graph) and starts a new log segment.
    pub fn snapshot(&self) -> Result<()> {
        let mut w = self.writer.lock();
        self.snapshot_locked(&mut w)
    }

    fn snapshot_locked(&self, w: &mut Writer) -> Result<()> {
        let next = w.gen + 1;
        // Everything appended so far is in the state; make the old segment durable
        // anyway so a fallback to the previous snapshot can replay it.
        let seq = w.wal.append(&Op::Delete(Vec::new()))?;
        w.wal.sync(seq)?;
        {
            // The indexer pauses so the graph written is the graph of `indexed` slots.
            let _turn = self.indexing.lock();
            let st = self.state.read();
            snapshot::write(&self.dir, next, |out| st.encode(out))?;
        }
        w.wal = Arc::new(Wal::open(wal::segment_path(&self.dir, next))?);
        w.gen = next;
        // Keep this snapshot and the one before it, with the segments it needs.
        let snaps = snapshot::list(&self.dir)?;
        if snaps.len() >= 2 {
            let keep_from = snaps[snaps.len() - 2];
            for g in snaps.iter().filter(|&&g| g < keep_from) {
                let _ = std::fs::remove_file(snapshot::path(&self.dir, *g));
            }
            for g in wal::segments(&self.dir)?
                .into_iter()
                .filter(|&g| g < keep_from)
            {
                let _ = std::fs::remove_file(wal::segment_path(&self.dir, g));
            }
        }
        crate::sync_dir(&self.dir)
    }

    /// Rebuilds the graph without tombstones (in parallel, from a copy). Writers and
    /// the indexer wait; readers keep using the old state until the swap.
    pub fn compact(&self) {
        let _w = self.writer.lock();
        let _turn = self.indexing.lock();
        let cfg = self.config();
        let rebuilt = self.state.read().compacted(&cfg);
        *self.state.write() = rebuilt;
    }

    pub fn stats(&self) -> Stats {
        // The writer lock is taken before, never inside, the state lock: compaction
        // holds the writer lock while it waits for the state lock.
        let wal_bytes = self.writer.lock().wal.bytes();
        let st = self.state.read();
        Stats {
            count: st.docs.len(),
            tombstones: st.tombstones,
            unindexed: st.unindexed(),
            wal_bytes,
        }
    }

    pub fn count(&self) -> usize {
        self.state.read().docs.len()
    }

    /// A stored document (its vector as stored: normalised for cosine).
    pub fn get(&self, id: &str) -> Option<Doc> {
        let st = self.state.read();
        st.docs.get(id).map(|e| Doc {
            id: id.to_owned(),
            vector: st.vector(e.slot).to_vec(),
            text: e.text.clone(),
            metadata: e.metadata.clone(),
        })
    }

    /// Ids in sorted order, `limit` after `after` (exclusive), for paging.
    pub fn list_ids(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        let st = self.state.read();
        let mut ids: Vec<&String> = st
            .docs
            .keys()
            .filter(|k| after.is_none_or(|a| k.as_str() > a))
            .collect();
        ids.sort_unstable();
        ids.into_iter().take(limit).cloned().collect()
    }

    /// Every live document (for re-embedding into a new space).
    pub fn documents(&self) -> Vec<Doc> {
        self.state.read().live_docs()
    }

    /// Top-k search. Exact when asked, when the collection is small, or when the
    /// graph (with tombstones and the filter) cannot fill k.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<Vec<Hit>> {
        // Only the copyable settings: search is a hot path, the config holds strings.
        let (dim, metric, default_ef) = {
            let c = self.config.read();
            (c.dim, c.metric, c.hnsw.ef)
        };
        if req.vector.len() != dim {
            return Err(IndexError::WrongQueryDimension {
                expected: dim,
                got: req.vector.len(),
            });
        }
        if req.k == 0 || req.k > 10_000 {
            return Err(IndexError::BadSearch(format!(
                "k {} is out of range 1..=10000",
                req.k
            )));
        }
        if let Some(ef) = req.ef {
            if !(1..=10_000).contains(&ef) {
                return Err(IndexError::BadSearch(format!(
                    "ef {ef} is out of range 1..=10000"
                )));
            }
        }
        let mut q = req.vector.to_vec();
        if q.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::BadSearch("query vector is not finite".into()));
        }
        if metric == Metric::Cosine {
            if q.iter().all(|x| *x == 0.0) {
                return Err(IndexError::BadSearch("query vector is zero".into()));
            }
            normalize(&mut q);
        }
        let st = self.state.read();
        let keep = |slot: usize| -> bool {
            match &st.ids[slot] {
                None => false,
                Some(id) => req.filter.is_none_or(|f| f.matches(&st.docs[id].metadata)),
            }
        };
        let score = |s: usize| metric.score(&q, st.vector(s));
        let want = req.k.min(st.docs.len());
        let mut scored: Vec<(f32, usize)> = Vec::new();
        if !req.exact && st.docs.len() >= EXACT_BELOW {
            let ef = req.ef.unwrap_or(default_ef).max(req.k);
            // Slots the graph does not hold yet are scored exactly below; nodes being
            // inserted right now may already be reachable, and are skipped here.
            let indexed = st.indexed.load(Ordering::Acquire);
            let accept = |n: u32| (n as usize) < indexed && keep(n as usize);
            let clean = req.filter.is_none() && st.tombstones == 0 && indexed == st.ids.len();
            // Unfiltered is cheaper, and exact when nothing needs skipping.
            let filter: Option<&dyn Fn(u32) -> bool> = if clean { None } else { Some(&accept) };
            scored = st
                .graph
                .search(&score, &st.vectors, metric, &q, req.k, ef, filter);
            scored.extend(
                (indexed..st.ids.len())
                    .filter(|&s| keep(s))
                    .map(|s| (score(s), s)),
            );
        }
        if scored.len() < want {
            scored = (0..st.ids.len())
                .filter(|&s| keep(s))
                .map(|s| (score(s), s))
                .collect();
        }
        Ok(st.hits(scored, req.k, req.threshold))
    }
}

impl Collection {
    /// Whether the collection has a lexical index.
    pub fn has_lexical(&self) -> bool {
        self.lexical.is_some()
    }

    /// Documents written but not committed to the lexical index yet (searched from
    /// memory meanwhile).
    pub fn lexical_tail(&self) -> usize {
        self.lexical.as_ref().map_or(0, |l| l.tail_len())
    }

    /// Commits the lexical index's pending changes now.
    pub fn commit_lexical(&self) -> Result<()> {
        self.lexical.as_ref().map_or(Ok(()), |l| l.commit_now())
    }

    /// Links the committed lexical index into `dest` (promotion of a staging copy).
    pub(crate) fn link_lexical(&self, dest: &Path) -> Result<()> {
        self.lexical.as_ref().map_or(Ok(()), |l| l.link_into(dest))
    }

    /// Top-k by BM25 over the documents' text; filters and tombstones as for
    /// [`Collection::search`].
    pub fn search_lexical(&self, req: &LexicalRequest<'_>) -> Result<Vec<Hit>> {
        let Some(lx) = &self.lexical else {
            return Err(no_lexical(&self.config.read().name));
        };
        if req.k == 0 || req.k > 10_000 {
            return Err(IndexError::BadSearch(format!(
                "k {} is out of range 1..=10000",
                req.k
            )));
        }
        let st = self.state.read();
        let resolve = |key: u64| -> Option<usize> {
            let slot = *st.lex_keys.get(&key)?;
            let id = st.ids[slot].as_ref()?;
            req.filter
                .is_none_or(|f| f.matches(&st.docs[id].metadata))
                .then_some(slot)
        };
        let scored = lx.search(req.text, req.k, req.filter.is_some(), &resolve)?;
        Ok(st.hits(scored, req.k, req.threshold))
    }
}

pub(crate) fn no_lexical(name: &str) -> IndexError {
    IndexError::BadSearch(format!(
        "mode lexical/hybrid: collection `{name}` has no lexical index (created with \"lexical\": \"none\", or before lexical search existed)"
    ))
}

/// Checks a batch before any store takes it: ids 1-512 bytes and unique, vectors
/// of the collection's dimension and finite; for cosine, non-zero and normalised
/// in place.
pub(crate) fn check_docs(docs: &mut [Doc], dim: usize, metric: Metric) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for d in docs.iter_mut() {
        if d.id.is_empty() || d.id.len() > 512 {
            return Err(IndexError::BadId(d.id.len()));
        }
        if !seen.insert(d.id.as_str()) {
            return Err(IndexError::DuplicateId(d.id.clone()));
        }
        let v = &mut d.vector;
        if v.len() != dim {
            return Err(IndexError::WrongDimension {
                id: d.id.clone(),
                expected: dim,
                got: v.len(),
            });
        }
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(IndexError::NotFinite {
                id: d.id.clone(),
                index,
            });
        }
        if metric == Metric::Cosine {
            if v.iter().all(|x| *x == 0.0) {
                return Err(IndexError::ZeroVector { id: d.id.clone() });
            }
            normalize(v);
        }
    }
    Ok(())
}

fn write_manifest(dir: &Path, config: &CollectionConfig) -> Result<()> {
    let m = Manifest {
        format_version: MANIFEST_VERSION,
        config: config.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&m).expect("manifest serialises");
    crate::write_atomic(&dir.join("manifest.json"), &bytes)
}
