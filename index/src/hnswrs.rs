//! The `hnsw_rs` engine: the hnsw_rs crate's graph behind the same collection code
//! as ours (log, slots, tombstones, filters, exact tail, snapshots). hnsw_rs keeps
//! its own copy of each vector; the node id is the collection's slot. Deleted and
//! replaced slots are skipped through hnsw_rs's filtered search (it has no
//! deletion); a compaction rebuilds the graph from the live slots.
//!
//! Its dump (`file_dump`: a graph file and a data file) is carried inside our
//! snapshot, so the snapshot's checksum covers it and a damaged dump falls back
//! like a damaged snapshot.

use std::path::Path;

use hnsw_rs::anndists::dist::{DistDot, DistL2};
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;

use crate::error::{IndexError, Result};
use crate::metric::Metric;
use crate::wal;

/// hnsw_rs's layer cap (it clamps higher values to 16).
const MAX_LAYER: usize = 16;
/// hnsw_rs ends the process for more links than this; refused before it sees them.
pub const MAX_CONNECTIONS: usize = 256;

enum Inner {
    /// Cosine on unit vectors: distance 1 − a·b.
    Dot(Hnsw<'static, f32, DistDot>),
    /// Euclidean distance.
    L2(Hnsw<'static, f32, DistL2>),
}

pub struct HnswRs {
    inner: Inner,
}

impl std::fmt::Debug for HnswRs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswRs").finish_non_exhaustive()
    }
}

/// Which of our metrics hnsw_rs can order by (its `DistDot` needs unit vectors).
pub fn supports(metric: Metric) -> bool {
    matches!(metric, Metric::Cosine | Metric::L2)
}

impl HnswRs {
    pub fn new(metric: Metric, m: usize, ef_construction: usize, capacity: usize) -> Self {
        assert!(
            m <= MAX_CONNECTIONS,
            "checked by CollectionConfig::validate"
        );
        let cap = capacity.max(1024);
        let inner = match metric {
            Metric::L2 => Inner::L2(Hnsw::new(m, cap, MAX_LAYER, ef_construction, DistL2)),
            _ => Inner::Dot(Hnsw::new(m, cap, MAX_LAYER, ef_construction, DistDot)),
        };
        HnswRs { inner }
    }

    /// Inserts slot `n` (safe from several threads at once).
    pub fn insert(&self, vectors: &[f32], dim: usize, n: u32) {
        let v = &vectors[n as usize * dim..][..dim];
        match &self.inner {
            Inner::Dot(h) => h.insert_slice((v, n as usize)),
            Inner::L2(h) => h.insert_slice((v, n as usize)),
        }
    }

    /// The `k` nearest accepted slots.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<u32> {
        let f = accept.map(|a| move |id: &usize| a(*id as u32));
        let filter: Option<&dyn hnsw_rs::filter::FilterT> =
            f.as_ref().map(|f| f as &dyn hnsw_rs::filter::FilterT);
        let found = match &self.inner {
            Inner::Dot(h) => h.search_filter(q, k, ef, filter),
            Inner::L2(h) => h.search_filter(q, k, ef, filter),
        };
        found.into_iter().map(|n| n.d_id as u32).collect()
    }

    fn points(&self) -> usize {
        match &self.inner {
            Inner::Dot(h) => h.get_nb_point(),
            Inner::L2(h) => h.get_nb_point(),
        }
    }

    /// hnsw_rs's dump (graph file, data file), framed for our snapshot; an empty
    /// graph (hnsw_rs cannot dump one) is a 0.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.points() == 0 {
            out.push(0);
            return Ok(());
        }
        out.push(1);
        let dir = tempfile::tempdir().map_err(|e| IndexError::Backend(e.to_string()))?;
        let dumped = match &self.inner {
            Inner::Dot(h) => h.file_dump(dir.path(), "g"),
            Inner::L2(h) => h.file_dump(dir.path(), "g"),
        };
        let base = dumped.map_err(|e| IndexError::Backend(format!("hnsw_rs dump: {e}")))?;
        for ext in ["hnsw.graph", "hnsw.data"] {
            let p = dir.path().join(format!("{base}.{ext}"));
            let bytes = std::fs::read(&p).map_err(crate::error::io_err(&p))?;
            wal::put_u64(out, bytes.len() as u64);
            out.extend_from_slice(&bytes);
        }
        Ok(())
    }

    /// Reads what [`HnswRs::encode`] wrote. Each load keeps hnsw_rs's small loader
    /// alive for the process's life (the loaded graph borrows it).
    pub fn decode(
        r: &mut wal::Reader<'_>,
        metric: Metric,
        m: usize,
        ef_construction: usize,
    ) -> Result<Self> {
        if r.u8()? == 0 {
            return Ok(HnswRs::new(metric, m, ef_construction, 0));
        }
        let dir = tempfile::tempdir().map_err(|e| IndexError::Backend(e.to_string()))?;
        for ext in ["hnsw.graph", "hnsw.data"] {
            let n = r.u64()? as usize;
            let bytes = r.bytes(n)?;
            let p = dir.path().join(format!("g.{ext}"));
            std::fs::write(&p, bytes).map_err(crate::error::io_err(&p))?;
        }
        load(dir.path(), metric)
    }
}

fn load(dir: &Path, metric: Metric) -> Result<HnswRs> {
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, "g")));
    let bad = |e: anyhow::Error| IndexError::Corrupt(format!("the hnsw_rs graph: {e}"));
    // The snapshot's checksum has vouched for these bytes before they get here.
    let loaded = match metric {
        Metric::L2 => io.load_hnsw::<f32, DistL2>().map(Inner::L2),
        _ => io.load_hnsw::<f32, DistDot>().map(Inner::Dot),
    };
    Ok(HnswRs {
        inner: loaded.map_err(bad)?,
    })
}
