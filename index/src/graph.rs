//! HNSW (Malkov & Yashunin, 2018) over vectors the collection stores: the graph holds
//! links only and borrows the vectors (`node × dim`, one flat slice) for every call.
//!
//! Links are atomics, so searches run while nodes are being inserted, and several
//! nodes can be inserted at once (the indexer's threads): a node's lists are only
//! rewritten under that node's lock, and no thread ever holds two node locks. A list
//! is `[count, id, id, ...]`; writers store the ids, then the count (release), so a
//! reader that loads the count (acquire) sees ids of nodes whose vectors are stored.
//!
//! Layer 0 keeps up to `2m` links a node, the upper layers `m`; new nodes choose
//! their neighbours with the paper's heuristic (a candidate is kept only if it is
//! closer to the new node than to every neighbour kept before it), as hnswlib does.
//! Levels come from a hash of the node number, so a graph's shape does not depend on
//! which thread inserted what. Distances are "lower is closer": `-dot` for cosine
//! (stored normalised) and dot, squared Euclidean for l2.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::error::{IndexError, Result};
use crate::metric::Metric;
use crate::wal::{put_u32, Reader};

const MAX_LEVEL: usize = 16;
const NONE: u32 = u32::MAX;

/// A node and its distance to the query; ordered by distance, then node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Near {
    pub d: f32,
    pub n: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.d.total_cmp(&o.d).then(self.n.cmp(&o.n))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Per-thread search state, reused across searches: visit marks by generation
/// (cleared only when the generation wraps) and the two heaps.
#[derive(Default)]
struct Scratch {
    marks: Vec<u16>,
    gen: u16,
    cand: BinaryHeap<std::cmp::Reverse<Near>>,
    best: BinaryHeap<Near>,
}

impl Scratch {
    fn start(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.marks.fill(0);
            self.gen = 1;
        }
        self.cand.clear();
        self.best.clear();
    }

    /// Marks `n` visited; false if it was already.
    #[inline]
    fn visit(&mut self, n: u32) -> bool {
        let m = &mut self.marks[n as usize];
        if *m == self.gen {
            false
        } else {
            *m = self.gen;
            true
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

pub(crate) struct Graph {
    dim: usize,
    metric: Metric,
    m: usize,
    m0: usize,
    ef_construction: usize,
    ml: f64,
    /// Nodes there is room for.
    cap: usize,
    /// Layer-0 lists, `1 + m0` words a node.
    base: Vec<AtomicU32>,
    /// Upper-layer lists (`level × (1 + m)` words), set once by the node's inserter.
    upper: Vec<OnceLock<Box<[AtomicU32]>>>,
    levels: Vec<AtomicU8>,
    locks: Vec<Mutex<()>>,
    /// `level << 32 | node`; node `NONE` while the graph is empty.
    entry: AtomicU64,
    entry_lock: Mutex<()>,
}

fn pack(node: u32, level: usize) -> u64 {
    ((level as u64) << 32) | node as u64
}

fn unpack(e: u64) -> (u32, usize) {
    (e as u32, (e >> 32) as usize)
}

/// splitmix64: the level of a node is a function of its number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; any address is allowed.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(v.as_ptr() as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(16) as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

impl Graph {
    pub(crate) fn new(dim: usize, metric: Metric, m: usize, ef_construction: usize) -> Self {
        let m = m.max(2);
        Graph {
            dim,
            metric,
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(1),
            ml: 1.0 / (m as f64).ln(),
            cap: 0,
            base: Vec::new(),
            upper: Vec::new(),
            levels: Vec::new(),
            locks: Vec::new(),
            entry: AtomicU64::new(pack(NONE, 0)),
            entry_lock: Mutex::new(()),
        }
    }

    /// Makes room for `nodes` nodes (growing by doubling).
    pub(crate) fn reserve(&mut self, nodes: usize) {
        if nodes <= self.cap {
            return;
        }
        let cap = nodes.max(self.cap * 2).max(1024);
        self.base
            .resize_with(cap * (1 + self.m0), || AtomicU32::new(0));
        self.upper.resize_with(cap, OnceLock::new);
        self.levels.resize_with(cap, || AtomicU8::new(0));
        self.locks.resize_with(cap, || Mutex::new(()));
        self.cap = cap;
    }

    #[inline]
    fn vec<'v>(&self, vecs: &'v [f32], n: u32) -> &'v [f32] {
        &vecs[n as usize * self.dim..][..self.dim]
    }

    #[inline]
    fn dist(&self, a: &[f32], b: &[f32]) -> f32 {
        self.metric.distance(a, b)
    }

    /// The list of `node` at `level` (empty if the node has no such layer).
    #[inline]
    fn list(&self, node: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let w = 1 + self.m0;
            &self.base[node as usize * w..][..w]
        } else {
            let w = 1 + self.m;
            match self.upper[node as usize].get() {
                Some(u) if u.len() >= level * w => &u[(level - 1) * w..][..w],
                _ => &[],
            }
        }
    }

    /// Copies the links of `node` at `level` into `out`.
    #[inline]
    fn links(&self, node: u32, level: usize, out: &mut Vec<u32>) {
        out.clear();
        let l = self.list(node, level);
        if let Some((count, ids)) = l.split_first() {
            let c = (count.load(Ordering::Acquire) as usize).min(ids.len());
            out.extend(ids[..c].iter().map(|x| x.load(Ordering::Relaxed)));
        }
    }

    fn set_links(&self, node: u32, level: usize, ids: &[u32]) {
        let l = self.list(node, level);
        for (slot, id) in l[1..].iter().zip(ids) {
            slot.store(*id, Ordering::Relaxed);
        }
        l[0].store(ids.len() as u32, Ordering::Release);
    }

    fn random_level(&self, node: u32) -> usize {
        let u = ((mix(node as u64) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.ml) as usize).min(MAX_LEVEL)
    }

    /// Greedy descent on one upper layer.
    fn greedy(&self, vecs: &[f32], q: &[f32], mut cur: Near, level: usize) -> Near {
        let mut buf = Vec::with_capacity(self.m);
        loop {
            let mut moved = false;
            self.links(cur.n, level, &mut buf);
            for &nb in &buf {
                let d = self.dist(q, self.vec(vecs, nb));
                if d < cur.d {
                    cur = Near { d, n: nb };
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Best-first search of one layer from `start`; the `ef` closest nodes that pass
    /// `filter` (all without one), closest first. Nodes that fail it are walked
    /// through but not returned.
    fn search_layer(
        &self,
        vecs: &[f32],
        q: &[f32],
        start: Near,
        ef: usize,
        level: usize,
        filter: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Near> {
        SCRATCH
            .with(|s| self.search_layer_in(vecs, q, start, ef, level, filter, &mut s.borrow_mut()))
    }

    #[allow(clippy::too_many_arguments)]
    fn search_layer_in(
        &self,
        vecs: &[f32],
        q: &[f32],
        start: Near,
        ef: usize,
        level: usize,
        filter: Option<&dyn Fn(u32) -> bool>,
        s: &mut Scratch,
    ) -> Vec<Near> {
        let filtering = filter.is_some();
        let accept = |n: u32| filter.is_none_or(|f| f(n));
        s.start(self.cap);
        let mut buf = Vec::with_capacity(self.m0);
        s.visit(start.n);
        s.cand.push(std::cmp::Reverse(start));
        if accept(start.n) {
            s.best.push(start);
        }
        let mut bound = s.best.peek().map_or(f32::INFINITY, |b| b.d);
        while let Some(std::cmp::Reverse(c)) = s.cand.pop() {
            if c.d > bound && (s.best.len() >= ef || !filtering) {
                break;
            }
            self.links(c.n, level, &mut buf);
            buf.retain(|&nb| s.visit(nb));
            if let Some(&first) = buf.first() {
                prefetch(self.vec(vecs, first));
            }
            for i in 0..buf.len() {
                if let Some(&next) = buf.get(i + 1) {
                    prefetch(self.vec(vecs, next));
                }
                let nb = buf[i];
                let d = self.dist(q, self.vec(vecs, nb));
                if s.best.len() < ef || d < bound {
                    s.cand.push(std::cmp::Reverse(Near { d, n: nb }));
                    if accept(nb) {
                        s.best.push(Near { d, n: nb });
                        if s.best.len() > ef {
                            s.best.pop();
                        }
                    }
                    if let Some(b) = s.best.peek() {
                        bound = b.d;
                    }
                }
            }
        }
        let mut out: Vec<Near> = s.best.drain().collect();
        out.sort_unstable();
        out
    }

    /// The neighbour-selection heuristic: walk the candidates closest first and keep
    /// one only if it is closer to the base than to every one kept so far.
    fn select(&self, vecs: &[f32], cands: &[Near], m: usize) -> Vec<u32> {
        if cands.len() <= m {
            return cands.iter().map(|c| c.n).collect();
        }
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in cands {
            let v = self.vec(vecs, c.n);
            if kept.iter().all(|&k| self.dist(v, self.vec(vecs, k)) >= c.d) {
                kept.push(c.n);
                if kept.len() >= m {
                    break;
                }
            }
        }
        kept
    }

    /// Adds `node` to the list of `nb` at `level`, shrinking it with the heuristic
    /// when full.
    fn connect(&self, vecs: &[f32], nb: u32, node: u32, level: usize) {
        let max = if level == 0 { self.m0 } else { self.m };
        let _lock = self.locks[nb as usize].lock();
        let mut cur = Vec::with_capacity(max + 1);
        self.links(nb, level, &mut cur);
        if cur.contains(&node) {
            return;
        }
        if cur.len() < max {
            cur.push(node);
            self.set_links(nb, level, &cur);
            return;
        }
        let base = self.vec(vecs, nb);
        let mut cands: Vec<Near> = cur
            .iter()
            .chain(std::iter::once(&node))
            .map(|&n| Near {
                d: self.dist(base, self.vec(vecs, n)),
                n,
            })
            .collect();
        cands.sort_unstable();
        let kept = self.select(vecs, &cands, max);
        self.set_links(nb, level, &kept);
    }

    /// Inserts `node`, whose vector is stored. Safe to call from several threads at
    /// once for different nodes, and while searches run.
    pub(crate) fn insert(&self, vecs: &[f32], node: u32) {
        let level = self.random_level(node);
        self.levels[node as usize].store(level as u8, Ordering::Relaxed);
        if level > 0 {
            let words = level * (1 + self.m);
            let lists = (0..words).map(|_| AtomicU32::new(0)).collect();
            let _ = self.upper[node as usize].set(lists);
        }
        let mut entry = self.entry.load(Ordering::Acquire);
        if unpack(entry).0 == NONE {
            let _g = self.entry_lock.lock();
            entry = self.entry.load(Ordering::Acquire);
            if unpack(entry).0 == NONE {
                self.entry.store(pack(node, level), Ordering::Release);
                return;
            }
        }
        let (ep, top) = unpack(entry);
        let q = self.vec(vecs, node);
        let mut cur = Near {
            d: self.dist(q, self.vec(vecs, ep)),
            n: ep,
        };
        for l in (level + 1..=top).rev() {
            cur = self.greedy(vecs, q, cur, l);
        }
        for l in (0..=level.min(top)).rev() {
            // Another inserter may already have linked this node: never to itself.
            let mut found = self.search_layer(vecs, q, cur, self.ef_construction, l, None);
            found.retain(|x| x.n != node);
            if found.is_empty() {
                continue;
            }
            let chosen = self.select(vecs, &found, self.m);
            {
                let _own = self.locks[node as usize].lock();
                self.set_links(node, l, &chosen);
            }
            for &nb in &chosen {
                self.connect(vecs, nb, node, l);
            }
            cur = found[0];
        }
        if level > top {
            let _g = self.entry_lock.lock();
            if level > unpack(self.entry.load(Ordering::Acquire)).1 {
                self.entry.store(pack(node, level), Ordering::Release);
            }
        }
    }

    /// The `k` closest nodes that pass `filter`, closest first, searching `ef` wide.
    pub(crate) fn search(
        &self,
        vecs: &[f32],
        q: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Near> {
        let (ep, top) = unpack(self.entry.load(Ordering::Acquire));
        if ep == NONE {
            return Vec::new();
        }
        let mut cur = Near {
            d: self.dist(q, self.vec(vecs, ep)),
            n: ep,
        };
        for l in (1..=top).rev() {
            cur = self.greedy(vecs, q, cur, l);
        }
        let mut found = self.search_layer(vecs, q, cur, ef.max(k), 0, filter);
        found.truncate(k);
        found
    }

    /// Appends the links of the first `nodes` nodes (which must be all the graph
    /// holds): entry, then per node its level and each layer's list.
    pub(crate) fn encode(&self, nodes: usize, out: &mut Vec<u8>) {
        let (ep, top) = unpack(self.entry.load(Ordering::Acquire));
        put_u32(out, ep);
        put_u32(out, top as u32);
        let mut buf = Vec::new();
        for n in 0..nodes as u32 {
            let level = self.levels[n as usize].load(Ordering::Relaxed) as usize;
            let level = if self.upper[n as usize].get().is_some() {
                level
            } else {
                0
            };
            out.push(level as u8);
            for l in 0..=level {
                self.links(n, l, &mut buf);
                put_u32(out, buf.len() as u32);
                buf.iter().for_each(|&x| put_u32(out, x));
            }
        }
    }

    /// Reads what [`Graph::encode`] wrote for `nodes` nodes, checking every id and
    /// count against the graph's shape.
    pub(crate) fn decode(&mut self, r: &mut Reader<'_>, nodes: usize) -> Result<()> {
        let bad = |m: String| IndexError::Corrupt(format!("graph: {m}"));
        self.reserve(nodes);
        let ep = r.u32()?;
        let top = r.u32()? as usize;
        if (ep != NONE && ep as usize >= nodes)
            || top > MAX_LEVEL
            || (ep == NONE && nodes > 0 && top != 0)
        {
            return Err(bad(format!("entry point {ep} at level {top}")));
        }
        let mut ids = Vec::new();
        for n in 0..nodes as u32 {
            let level = r.u8()? as usize;
            if level > MAX_LEVEL || (ep != NONE && level > top) {
                return Err(bad(format!("node {n} has level {level}")));
            }
            self.levels[n as usize].store(level as u8, Ordering::Relaxed);
            if level > 0 {
                let words = level * (1 + self.m);
                let lists = (0..words).map(|_| AtomicU32::new(0)).collect();
                let _ = self.upper[n as usize].set(lists);
            }
            for l in 0..=level {
                let count = r.u32()? as usize;
                let max = if l == 0 { self.m0 } else { self.m };
                if count > max {
                    return Err(bad(format!("node {n} has {count} links at level {l}")));
                }
                ids.clear();
                for _ in 0..count {
                    let id = r.u32()?;
                    if id as usize >= nodes {
                        return Err(bad(format!("node {n} links to missing node {id}")));
                    }
                    ids.push(id);
                }
                self.set_links(n, l, &ids);
            }
        }
        self.entry.store(pack(ep, top), Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n * dim)
            .map(|i| (mix(seed ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        for row in v.chunks_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn exact(vecs: &[f32], q: &[f32], dim: usize, k: usize) -> Vec<u32> {
        let mut all: Vec<Near> = vecs
            .chunks(dim)
            .enumerate()
            .map(|(i, v)| Near {
                d: Metric::Cosine.distance(q, v),
                n: i as u32,
            })
            .collect();
        all.sort_unstable();
        all.iter().take(k).map(|x| x.n).collect()
    }

    #[test]
    fn parallel_build_finds_the_exact_neighbours_and_round_trips() {
        use rayon::prelude::*;
        let (n, dim) = (3000, 24);
        let vecs = unit_vectors(n, dim, 1);
        let mut g = Graph::new(dim, Metric::Cosine, 12, 100);
        g.reserve(n);
        (0..n as u32)
            .into_par_iter()
            .for_each(|i| g.insert(&vecs, i));
        let queries = unit_vectors(100, dim, 2);
        let recall = |g: &Graph| {
            let mut found = 0;
            for q in queries.chunks(dim) {
                let want = exact(&vecs, q, dim, 10);
                let got = g.search(&vecs, q, 10, 64, None);
                assert!(got.windows(2).all(|w| w[0].d <= w[1].d));
                found += got.iter().filter(|x| want.contains(&x.n)).count();
            }
            found as f64 / 1000.0
        };
        let r = recall(&g);
        assert!(r >= 0.95, "recall@10 {r}");
        // Every list is within its bound and names stored nodes only.
        let mut buf = Vec::new();
        for i in 0..n as u32 {
            g.links(i, 0, &mut buf);
            assert!(buf.len() <= 24 && buf.iter().all(|&x| (x as usize) < n && x != i));
        }
        let mut bytes = Vec::new();
        g.encode(n, &mut bytes);
        let mut back = Graph::new(dim, Metric::Cosine, 12, 100);
        back.decode(&mut Reader::new(&bytes), n).unwrap();
        let mut again = Vec::new();
        back.encode(n, &mut again);
        assert_eq!(bytes, again);
        assert_eq!(recall(&back), r);
        // A corrupt link is refused, not followed.
        let mut bad = bytes.clone();
        let at = bad.len() - 4;
        bad[at..].copy_from_slice(&(n as u32 + 5).to_le_bytes());
        let mut g2 = Graph::new(dim, Metric::Cosine, 12, 100);
        assert!(g2.decode(&mut Reader::new(&bad), n).is_err());
    }

    #[test]
    fn filtered_search_returns_only_accepted_nodes() {
        let (n, dim) = (2000, 16);
        let vecs = unit_vectors(n, dim, 3);
        let mut g = Graph::new(dim, Metric::Dot, 8, 64);
        g.reserve(n);
        (0..n as u32).for_each(|i| g.insert(&vecs, i));
        let q = &unit_vectors(1, dim, 4)[..];
        let hits = g.search(&vecs, q, 10, 64, Some(&|x| x % 7 == 0));
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.n % 7 == 0));
    }
}
