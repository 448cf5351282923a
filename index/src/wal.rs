//! The write-ahead log: framed records (`len u32 | crc32 u32 | payload`) appended to
//! numbered segments, with group commit: concurrent writers share one fsync.
//! A torn or corrupt tail is detected by length and checksum and cut off on replay.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use crate::error::{io_err, IndexError, Result};

/// One stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub id: String,
    pub vector: Vec<f32>,
    pub text: String,
    pub metadata: Value,
}

/// A logged change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Upsert(Vec<Doc>),
    Delete(Vec<String>),
}

// ---- binary encoding shared by the log and the snapshots ----

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_doc(out: &mut Vec<u8>, d: &Doc) {
    put_doc_parts(out, &d.id, &d.vector, &d.text, &d.metadata);
}

pub(crate) fn put_doc_parts(out: &mut Vec<u8>, id: &str, vector: &[f32], text: &str, meta: &Value) {
    put_str(out, id);
    put_u32(out, vector.len() as u32);
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    put_str(out, text);
    put_str(out, &meta.to_string());
}

/// A cursor over encoded bytes; every read checks bounds.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| IndexError::Corrupt("record ends early".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| IndexError::Corrupt("string is not UTF-8".into()))
    }

    pub(crate) fn doc(&mut self) -> Result<Doc> {
        let id = self.str()?;
        let dim = self.u32()? as usize;
        let raw = self.take(
            dim.checked_mul(4)
                .ok_or_else(|| IndexError::Corrupt("dimension overflows".into()))?,
        )?;
        let vector = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let text = self.str()?;
        let metadata = serde_json::from_str(&self.str()?)
            .map_err(|e| IndexError::Corrupt(format!("metadata: {e}")))?;
        Ok(Doc {
            id,
            vector,
            text,
            metadata,
        })
    }

    pub(crate) fn done(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// What is left to read.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

impl Op {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Op::Upsert(docs) => {
                out.push(1);
                put_u32(&mut out, docs.len() as u32);
                docs.iter().for_each(|d| put_doc(&mut out, d));
            }
            Op::Delete(ids) => {
                out.push(2);
                put_u32(&mut out, ids.len() as u32);
                ids.iter().for_each(|i| put_str(&mut out, i));
            }
        }
        out
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Op> {
        let mut r = Reader::new(buf);
        let op = match r.u8()? {
            1 => {
                let n = r.u32()?;
                Op::Upsert((0..n).map(|_| r.doc()).collect::<Result<_>>()?)
            }
            2 => {
                let n = r.u32()?;
                Op::Delete((0..n).map(|_| r.str()).collect::<Result<_>>()?)
            }
            t => return Err(IndexError::Corrupt(format!("unknown record type {t}"))),
        };
        if !r.done() {
            return Err(IndexError::Corrupt("trailing bytes in a record".into()));
        }
        Ok(op)
    }
}

// ---- segments ----

pub(crate) fn segment_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("wal-{gen:010}.log"))
}

/// Generations of the files `{prefix}{g}{suffix}` in `dir`, ascending.
pub(crate) fn generations(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<u64>> {
    let mut gens = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let name = e
            .map_err(io_err(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(g) = name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(suffix))
        {
            if let Ok(g) = g.parse() {
                gens.push(g);
            }
        }
    }
    gens.sort_unstable();
    Ok(gens)
}

/// Generations of the log segments in `dir`, ascending.
pub(crate) fn segments(dir: &Path) -> Result<Vec<u64>> {
    generations(dir, "wal-", ".log")
}

/// Reads a segment's complete records; a torn or corrupt tail is cut off (the file is
/// truncated to its last good record) and counted in the second value.
pub(crate) fn replay(path: &Path) -> Result<(Vec<Op>, bool)> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err(path))?;
    let mut ops = Vec::new();
    let mut pos = 0;
    let mut torn = false;
    while pos < buf.len() {
        if buf.len() - pos < 8 {
            torn = true;
            break;
        }
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().expect("4"));
        let body = pos + 8;
        if buf.len() - body < len || crc32fast::hash(&buf[body..body + len]) != crc {
            torn = true;
            break;
        }
        match Op::decode(&buf[body..body + len]) {
            Ok(op) => ops.push(op),
            Err(_) => {
                torn = true;
                break;
            }
        }
        pos = body + len;
    }
    if torn {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(pos as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok((ops, torn))
}

struct WalState {
    file: File,
    bytes: u64,
    written: u64,
    synced: u64,
    syncing: bool,
}

/// The open segment of one collection.
pub(crate) struct Wal {
    path: PathBuf,
    state: Mutex<WalState>,
    synced: Condvar,
}

impl Wal {
    pub(crate) fn open(path: PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let bytes = file.metadata().map_err(io_err(&path))?.len();
        if let Some(dir) = path.parent() {
            crate::sync_dir(dir)?;
        }
        Ok(Wal {
            path,
            state: Mutex::new(WalState {
                file,
                bytes,
                written: 0,
                synced: 0,
                syncing: false,
            }),
            synced: Condvar::new(),
        })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Appends a record (not yet durable); returns its sequence number.
    pub(crate) fn append(&self, op: &Op) -> Result<u64> {
        let payload = op.encode();
        let mut rec = Vec::with_capacity(payload.len() + 8);
        put_u32(&mut rec, payload.len() as u32);
        put_u32(&mut rec, crc32fast::hash(&payload));
        rec.extend_from_slice(&payload);
        let mut s = self.state.lock();
        s.file.write_all(&rec).map_err(io_err(&self.path))?;
        s.bytes += rec.len() as u64;
        s.written += 1;
        Ok(s.written)
    }

    /// Returns once record `seq` is on disk. One caller syncs for everyone waiting:
    /// writers that arrive during an fsync are covered by the next one.
    pub(crate) fn sync(&self, seq: u64) -> Result<()> {
        let mut s = self.state.lock();
        loop {
            if s.synced >= seq {
                return Ok(());
            }
            if !s.syncing {
                s.syncing = true;
                let target = s.written;
                let file = s.file.try_clone().map_err(io_err(&self.path))?;
                drop(s);
                let r = file.sync_data().map_err(io_err(&self.path));
                s = self.state.lock();
                s.syncing = false;
                if r.is_ok() {
                    s.synced = s.synced.max(target);
                }
                self.synced.notify_all();
                r?;
            } else {
                self.synced.wait(&mut s);
            }
        }
    }
}
