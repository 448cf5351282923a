//! One collection: documents (id → vector, text, metadata), an HNSW graph over their
//! vectors with tombstones for replaced and deleted ones, the write-ahead log and
//! snapshots. Readers share the state; writers are serialised by `writer`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hnsw_rs::prelude::Hnsw;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{io_err, IndexError, Result};
use crate::filter::Filter;
use crate::metric::{GraphDistance, Metric};
use crate::snapshot;
use crate::wal::{self, Doc, Op, Wal};

/// Below this many live documents a search is exact (brute force).
pub const EXACT_BELOW: usize = 2000;
/// The log is folded into a snapshot once its segment passes this size.
pub const SNAPSHOT_BYTES: u64 = 64 << 20;
const MANIFEST_VERSION: u32 = 1;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node (hnsw_rs `max_nb_connection`), 2..=256.
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
}

impl CollectionConfig {
    pub fn validate(&self) -> Result<()> {
        crate::check_name(&self.name)?;
        let bad = |m: String| Err(IndexError::BadConfig(m));
        if self.dim == 0 || self.dim > 65536 {
            return bad(format!("dimension {} is out of range 1..=65536", self.dim));
        }
        // hnsw_rs ends the process above 256 links: refuse it here instead.
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
    pub wal_bytes: u64,
}

type Graph = Hnsw<'static, f32, GraphDistance>;

struct Entry {
    slot: usize,
    text: String,
    metadata: Value,
}

struct State {
    docs: HashMap<String, Entry>,
    /// Graph node id → (document id, vector); `None` is a tombstone.
    slots: Vec<Option<(String, Vec<f32>)>>,
    graph: Arc<Graph>,
    tombstones: usize,
}

struct Writer {
    wal: Arc<Wal>,
    gen: u64,
}

pub struct Collection {
    dir: PathBuf,
    config: RwLock<CollectionConfig>,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    compacting: AtomicBool,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn new_graph(cfg: &CollectionConfig, hint: usize) -> Graph {
    Hnsw::new(
        cfg.hnsw.m,
        hint.max(1024),
        16,
        cfg.hnsw.ef_construction,
        GraphDistance(cfg.metric),
    )
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

impl State {
    fn empty(cfg: &CollectionConfig) -> Self {
        State {
            docs: HashMap::new(),
            slots: Vec::new(),
            graph: Arc::new(new_graph(cfg, 0)),
            tombstones: 0,
        }
    }

    /// Applies a change to the maps; returns the new slots, for the graph.
    fn apply(&mut self, op: Op) -> Vec<usize> {
        let mut added = Vec::new();
        match op {
            Op::Upsert(docs) => {
                for d in docs {
                    let slot = self.slots.len();
                    self.slots.push(Some((d.id.clone(), d.vector)));
                    let e = Entry {
                        slot,
                        text: d.text,
                        metadata: d.metadata,
                    };
                    if let Some(old) = self.docs.insert(d.id, e) {
                        self.slots[old.slot] = None;
                        self.tombstones += 1;
                    }
                    added.push(slot);
                }
            }
            Op::Delete(ids) => {
                for id in ids {
                    if let Some(old) = self.docs.remove(&id) {
                        self.slots[old.slot] = None;
                        self.tombstones += 1;
                    }
                }
            }
        }
        added
    }

    fn index(&self, slots: &[usize]) {
        let items: Vec<(&[f32], usize)> = slots
            .iter()
            .filter_map(|&s| self.slots[s].as_ref().map(|(_, v)| (v.as_slice(), s)))
            .collect();
        if items.len() > 64 {
            self.graph.parallel_insert_slice(&items);
        } else {
            items.into_iter().for_each(|it| self.graph.insert_slice(it));
        }
    }

    fn live_docs(&self) -> Vec<Doc> {
        self.docs
            .iter()
            .map(|(id, e)| Doc {
                id: id.clone(),
                vector: self.slots[e.slot].as_ref().expect("live slot").1.clone(),
                text: e.text.clone(),
                metadata: e.metadata.clone(),
            })
            .collect()
    }
}

impl Collection {
    /// Creates a new, empty collection in `dir` (which must not exist yet).
    pub(crate) fn create(dir: &Path, config: CollectionConfig) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_manifest(dir, &config)?;
        Self::open(dir)
    }

    /// Opens a collection: manifest, newest readable snapshot, then the log after it.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
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
            match snapshot::read(&snapshot::path(dir, g)) {
                Ok(docs) => {
                    state.apply(Op::Upsert(docs));
                    base = g;
                    break;
                }
                Err(e) => warnings.push(format!("snapshot {g} skipped: {e}")),
            }
        }
        let segs = wal::segments(dir)?;
        for &g in segs.iter().filter(|&&g| g >= base) {
            let (ops, torn) = wal::replay(&wal::segment_path(dir, g))?;
            if torn {
                warnings.push(format!(
                    "log segment {g}: a torn or corrupt tail was dropped"
                ));
            }
            for op in ops {
                state.apply(op);
            }
        }
        // The graph is built once over the live vectors, in parallel.
        let live: Vec<usize> = (0..state.slots.len())
            .filter(|&s| state.slots[s].is_some())
            .collect();
        state = compacted(state, &config, &live);
        let gen = segs.last().copied().unwrap_or(base).max(base);
        let wal = Arc::new(Wal::open(wal::segment_path(dir, gen))?);
        Ok(Collection {
            dir: dir.to_owned(),
            config: RwLock::new(config),
            state: RwLock::new(state),
            writer: Mutex::new(Writer { wal, gen }),
            compacting: AtomicBool::new(false),
            warnings,
        })
    }

    pub fn config(&self) -> CollectionConfig {
        self.config.read().clone()
    }

    /// Problems found while opening (skipped snapshots, dropped torn tails).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Records a new embedding space (after the vectors were all replaced).
    pub fn set_space(&self, space: Space) -> Result<()> {
        let _w = self.writer.lock();
        let mut cfg = self.config.read().clone();
        cfg.space = space;
        write_manifest(&self.dir, &cfg)?;
        *self.config.write() = cfg;
        Ok(())
    }

    fn check_vector(&self, id: &str, v: &mut [f32]) -> Result<()> {
        let cfg = self.config.read();
        if v.len() != cfg.dim {
            return Err(IndexError::WrongDimension {
                id: id.to_owned(),
                expected: cfg.dim,
                got: v.len(),
            });
        }
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(IndexError::NotFinite {
                id: id.to_owned(),
                index,
            });
        }
        if cfg.metric == Metric::Cosine {
            if v.iter().all(|x| *x == 0.0) {
                return Err(IndexError::ZeroVector { id: id.to_owned() });
            }
            normalize(v);
        }
        Ok(())
    }

    /// Inserts or replaces documents. The whole batch is validated first (nothing is
    /// stored if any document is bad) and the call returns once it is durable.
    pub fn upsert(self: &Arc<Self>, mut docs: Vec<Doc>) -> Result<usize> {
        let mut seen = std::collections::HashSet::new();
        for d in docs.iter_mut() {
            if d.id.is_empty() || d.id.len() > 512 {
                return Err(IndexError::BadId(d.id.len()));
            }
            if !seen.insert(d.id.clone()) {
                return Err(IndexError::DuplicateId(d.id.clone()));
            }
            let id = d.id.clone();
            self.check_vector(&id, &mut d.vector)?;
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
        let (added, graph) = {
            let mut st = self.state.write();
            (st.apply(op), st.graph.clone())
        };
        {
            // The graph is filled under the read lock, so searches go on meanwhile.
            let st = self.state.read();
            if Arc::ptr_eq(&graph, &st.graph) {
                st.index(&added);
            }
        }
        if wal.bytes() > SNAPSHOT_BYTES {
            self.snapshot_locked(&mut w)?;
        }
        let compact = {
            let st = self.state.read();
            st.tombstones > 1000 && st.tombstones > st.docs.len() / 4
        };
        drop(w);
        wal.sync(seq)?;
        if compact && !self.compacting.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            std::thread::spawn(move || {
                me.compact();
                me.compacting.store(false, Ordering::Release);
            });
        }
        Ok(())
    }

    /// Writes a snapshot of every live document and starts a new log segment.
    pub fn snapshot(&self) -> Result<()> {
        let mut w = self.writer.lock();
        self.snapshot_locked(&mut w)
    }

    fn snapshot_locked(&self, w: &mut Writer) -> Result<()> {
        let next = w.gen + 1;
        let docs = self.state.read().live_docs();
        // Everything appended so far is in `docs`; make the old segment durable anyway
        // so a fallback to the previous snapshot can replay it.
        let seq = w.wal.append(&Op::Delete(Vec::new()))?;
        w.wal.sync(seq)?;
        snapshot::write(&self.dir, next, &docs)?;
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

    /// Rebuilds the graph without tombstones from a copy of the state. Writers wait;
    /// readers keep using the old graph until the swap.
    pub fn compact(&self) {
        let _w = self.writer.lock();
        let cfg = self.config();
        let rebuilt = {
            let st = self.state.read();
            let copy = State {
                docs: st
                    .docs
                    .iter()
                    .map(|(k, e)| {
                        let e = Entry {
                            slot: e.slot,
                            text: e.text.clone(),
                            metadata: e.metadata.clone(),
                        };
                        (k.clone(), e)
                    })
                    .collect(),
                slots: st.slots.clone(),
                graph: st.graph.clone(),
                tombstones: st.tombstones,
            };
            let live: Vec<usize> = (0..copy.slots.len())
                .filter(|&s| copy.slots[s].is_some())
                .collect();
            compacted(copy, &cfg, &live)
        };
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
            vector: st.slots[e.slot].as_ref().expect("live").1.clone(),
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
            match &st.slots[slot] {
                None => false,
                Some((id, _)) => req.filter.is_none_or(|f| f.matches(&st.docs[id].metadata)),
            }
        };
        let want = req.k.min(st.docs.len());
        let mut scored: Vec<(f32, usize)> = Vec::new();
        if !req.exact && st.docs.len() >= EXACT_BELOW {
            let ef = req.ef.unwrap_or(default_ef).max(req.k);
            let f = |id: &usize| keep(*id);
            // The unfiltered search is cheaper; it is exact when nothing needs skipping.
            let filter: Option<&dyn hnsw_rs::prelude::FilterT> =
                if req.filter.is_none() && st.tombstones == 0 {
                    None
                } else {
                    Some(&f)
                };
            scored = st
                .graph
                .search_filter(&q, req.k, ef, filter)
                .into_iter()
                .filter(|n| keep(n.d_id))
                .map(|n| (metric.score_of_distance(n.distance), n.d_id))
                .collect();
        }
        if scored.len() < want {
            scored = (0..st.slots.len())
                .filter(|&s| keep(s))
                .map(|s| (metric.score(&q, &st.slots[s].as_ref().expect("kept").1), s))
                .collect();
        }
        let id_of = |s: usize| &st.slots[s].as_ref().expect("kept").0;
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| id_of(a.1).cmp(id_of(b.1))));
        scored.truncate(req.k);
        Ok(scored
            .into_iter()
            .filter(|(score, _)| req.threshold.is_none_or(|t| *score >= t))
            .map(|(score, s)| {
                let id = id_of(s).clone();
                let e = &st.docs[&id];
                Hit {
                    score,
                    text: e.text.clone(),
                    metadata: e.metadata.clone(),
                    id,
                }
            })
            .collect())
    }
}

/// The same state with dense slots (no tombstones) and a graph over them.
fn compacted(mut st: State, cfg: &CollectionConfig, live: &[usize]) -> State {
    st.graph = Arc::new(new_graph(cfg, live.len()));
    let mut remap = HashMap::with_capacity(live.len());
    let mut slots = Vec::with_capacity(live.len());
    for (new, &old) in live.iter().enumerate() {
        remap.insert(old, new);
        slots.push(st.slots[old].take());
    }
    st.slots = slots;
    for e in st.docs.values_mut() {
        e.slot = remap[&e.slot];
    }
    st.tombstones = 0;
    let all: Vec<usize> = (0..st.slots.len()).collect();
    st.index(&all);
    st
}

fn write_manifest(dir: &Path, config: &CollectionConfig) -> Result<()> {
    let m = Manifest {
        format_version: MANIFEST_VERSION,
        config: config.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&m).expect("manifest serialises");
    crate::write_atomic(&dir.join("manifest.json"), &bytes)
}
