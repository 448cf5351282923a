//! `aside eval`'s caches: corpus embeddings keyed by everything that decides them
//! (model, adapter bytes, max length, precision, corpus), and re-ranking scores
//! appended query by query so an interrupted run picks up where it stopped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::Beir;

const CACHE_MAGIC: &[u8; 8] = b"ASIDEEM1";

/// What decides a vector or a score besides the texts.
pub struct CacheKey<'a> {
    pub dir: &'a Path,
    /// sha256 of the model's weights.
    pub model_sha: &'a str,
    pub max_length: usize,
    pub precision: aside_backbone::Precision,
}

/// `DIR/corpus-KEY.f32`, KEY a digest of the model's weights, the adapter file's
/// bytes, the encoding options and every document.
pub fn corpus_cache_path(
    key: &CacheKey<'_>,
    adapter: Option<&Path>,
    data: &Beir,
) -> anyhow::Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(key.model_sha.as_bytes());
    hash_adapter(&mut h, adapter)?;
    h.update(format!(
        "|{}|{}|{}|",
        key.max_length,
        key.precision,
        data.corpus.len()
    ));
    for (id, text) in &data.corpus {
        h.update(id.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(&h.finalize()[..12]);
    Ok(key.dir.join(format!("corpus-{digest}.f32")))
}

/// Feeds an adapter's bytes (a file, or every file of a PEFT folder) to `h`.
fn hash_adapter(h: &mut Sha256, adapter: Option<&Path>) -> anyhow::Result<()> {
    match adapter {
        Some(p) if p.is_dir() => {
            let mut names: Vec<_> = std::fs::read_dir(p)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for f in names.iter().filter(|f| f.is_file()) {
                h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
                h.update(aside_backbone::sha256_file(f)?);
            }
        }
        Some(p) => h.update(aside_backbone::sha256_file(p)?),
        None => h.update(b"no adapter"),
    }
    Ok(())
}

/// `DIR/rerank-KEY.tsv`, KEY a digest of the model's weights, the rerank adapter's
/// bytes, the max length and the precision: what decides a pair's score besides
/// the two texts, which each line's own key covers.
pub fn rerank_cache_path(key: &CacheKey<'_>, rerank: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(key.model_sha.as_bytes());
    hash_adapter(&mut h, rerank)?;
    h.update(format!("|{}|{}|", key.max_length, key.precision));
    let digest = hex::encode(&h.finalize()[..12]);
    Ok(key.dir.join(format!("rerank-{digest}.tsv")))
}

/// Bytes of the digest a pair key keeps (hex: twice as many characters).
const PAIR_KEY_BYTES: usize = 12;

/// A (query, document) pair's line key: a digest of both texts.
pub fn pair_key(query: &str, doc: &str) -> String {
    let mut h = Sha256::new();
    h.update(query.as_bytes());
    h.update([0]);
    h.update(doc.as_bytes());
    hex::encode(&h.finalize()[..PAIR_KEY_BYTES])
}

/// Re-ranking scores by pair key, appended to a file (`KEY<TAB>f32 bits in hex`, one
/// line a pair) one query at a time, so a killed run keeps what it computed. Lines
/// that do not parse (a write cut short) are ignored. No file: in memory only.
#[derive(Default)]
pub struct ScoreCache {
    pub path: Option<PathBuf>,
    file: Option<std::fs::File>,
    pub known: HashMap<String, f32>,
}

impl ScoreCache {
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let known: HashMap<String, f32> = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once('\t')?;
                    let v = f32::from_bits(u32::from_str_radix(v, 16).ok()?);
                    (k.len() == 2 * PAIR_KEY_BYTES && v.is_finite()).then(|| (k.to_owned(), v))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let dir = path.parent().expect("a file in the cache folder");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A line cut short by an earlier kill must not swallow the first new one.
        file.write_all(b"\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            path: Some(path),
            file: Some(file),
            known,
        })
    }

    pub fn add(&mut self, fresh: &[(String, f32)]) -> anyhow::Result<()> {
        if let (Some(f), Some(path)) = (&mut self.file, &self.path) {
            let lines: String = fresh
                .iter()
                .map(|(k, v)| format!("{k}\t{:08x}\n", v.to_bits()))
                .collect();
            f.write_all(lines.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        self.known.extend(fresh.iter().cloned());
        Ok(())
    }
}

/// The cached embeddings, or `None` when the file is missing or not what it should be.
pub fn read_embeddings(path: &Path, n: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    let (head, body) = bytes.split_at_checked(16)?;
    if &head[..8] != CACHE_MAGIC || u32::from_le_bytes(head[8..12].try_into().ok()?) as usize != n {
        return None;
    }
    let d = u32::from_le_bytes(head[12..16].try_into().ok()?) as usize;
    if d == 0 || body.len() != n * d * 4 {
        return None;
    }
    let rows = f32_rows(body, d);
    rows.iter().flatten().all(|v| v.is_finite()).then_some(rows)
}

pub fn write_embeddings(path: &Path, docs: &[Vec<f32>]) -> anyhow::Result<()> {
    let d = docs.first().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(16 + docs.len() * d * 4);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(docs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(d as u32).to_le_bytes());
    for v in docs {
        v.iter()
            .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
    }
    let dir = path.parent().expect("a file in the cache folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("f32.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Rows of `dim` little-endian f32 from `bytes` (whose length is a multiple of
/// `4 · dim`).
pub fn f32_rows(bytes: &[u8], dim: usize) -> Vec<Vec<f32>> {
    bytes
        .chunks_exact(4 * dim)
        .map(|row| {
            row.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        })
        .collect()
}
