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

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
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

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        self.take(n)
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

/// What replaying a segment found besides its good records.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Replay {
    /// Bytes of an incomplete last record (a write cut off by a crash: never
    /// acknowledged), cut off the file.
    pub torn_tail: Option<u64>,
    /// Corrupt records inside the segment, skipped: `(offset, bytes)`. Records after
    /// them were read; the file is left as it is.
    pub skipped: Vec<(u64, u64)>,
}

/// The record framed at `pos`, if its frame fits, its checksum holds and it decodes:
/// the op and the offset after it.
fn record_at(buf: &[u8], pos: usize) -> Option<(Op, usize)> {
    let head = buf.get(pos..pos.checked_add(8)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
    let end = (pos + 8).checked_add(len)?;
    let body = buf.get(pos + 8..end)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Op::decode(body).ok().map(|op| (op, end))
}

/// The first offset after `from` where a good record starts, if any.
fn next_record(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(8)).find(|&q| record_at(buf, q).is_some())
}

/// Reads a segment's records. A corrupt record inside the segment is skipped: by its
/// length frame when that frame leads to the next good record (or the end), else up
/// to the next good record found; the records after it are kept. Only bytes after
/// the last good record that hold no good record are a torn tail (a write cut off
/// by a crash), and only those are cut off the file.
pub(crate) fn replay(path: &Path) -> Result<(Vec<Op>, Replay)> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err(path))?;
    let mut ops = Vec::new();
    let mut report = Replay::default();
    let mut pos = 0;
    while pos < buf.len() {
        if let Some((op, next)) = record_at(&buf, pos) {
            ops.push(op);
            pos = next;
            continue;
        }
        // A bad record: where does the next good one start?
        let by_frame = buf
            .get(pos..pos + 4)
            .map(|l| u32::from_le_bytes(l.try_into().expect("4")) as usize)
            .and_then(|len| (pos + 8).checked_add(len))
            .filter(|&end| {
                end <= buf.len() && (end == buf.len() || record_at(&buf, end).is_some())
            });
        let resume = match by_frame {
            Some(end) if end < buf.len() => Some(end),
            _ => next_record(&buf, pos + 1),
        };
        match resume {
            Some(q) => {
                report.skipped.push((pos as u64, (q - pos) as u64));
                pos = q;
            }
            None if by_frame == Some(buf.len()) => {
                // A whole last record with a bad checksum: written completely, then
                // damaged. It is skipped, not cut, so the bytes stay for inspection.
                report.skipped.push((pos as u64, (buf.len() - pos) as u64));
                pos = buf.len();
            }
            None => {
                report.torn_tail = Some((buf.len() - pos) as u64);
                break;
            }
        }
    }
    if report.torn_tail.is_some() {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(pos as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok((ops, report))
}

struct WalState {
    file: File,
    /// Length of the file up to the last whole record.
    bytes: u64,
    written: u64,
    synced: u64,
    syncing: bool,
    /// Set when the log can no longer be trusted to hold what it is given (an fsync
    /// failed, or a failed write could not be cut off): writes are refused.
    failed: Option<String>,
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
                failed: None,
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
        if let Some(why) = &s.failed {
            return Err(IndexError::ReadOnly(why.clone()));
        }
        if let Err(e) = s.file.write_all(&rec) {
            // Leave the log as it was: a partial record must not stay in front of
            // the records appended after it (replay would stop there).
            let bytes = s.bytes;
            if let Err(cut) = s.file.set_len(bytes) {
                s.failed = Some(format!(
                    "a failed write to {} could not be cut off ({cut})",
                    self.path.display()
                ));
            }
            return Err(io_err(&self.path)(e));
        }
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
            if let Some(why) = &s.failed {
                // After a failed fsync the kernel may have dropped the pages: nothing
                // written since the last good fsync can be called durable.
                return Err(IndexError::ReadOnly(why.clone()));
            }
            if !s.syncing {
                s.syncing = true;
                let target = s.written;
                let file = s.file.try_clone().map_err(io_err(&self.path))?;
                drop(s);
                let r = file.sync_data().map_err(io_err(&self.path));
                s = self.state.lock();
                s.syncing = false;
                match &r {
                    Ok(()) => s.synced = s.synced.max(target),
                    Err(e) => s.failed = Some(format!("the log could not be made durable: {e}")),
                }
                self.synced.notify_all();
                r?;
            } else {
                self.synced.wait(&mut s);
            }
        }
    }
}
