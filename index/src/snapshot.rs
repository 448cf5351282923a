//! Snapshots: every live document of a collection in one file,
//! `ASIDESNP | format version u32 | body | crc32(body) u32`, written to a temp file,
//! fsynced and renamed. Snapshot `snap-{g}` holds every change logged in segments
//! before `g`; the previous snapshot and its segments are kept as a fallback.

use std::path::{Path, PathBuf};

use crate::error::{io_err, IndexError, Result};
use crate::wal::{put_doc, put_u32, Doc, Reader};

const MAGIC: &[u8; 8] = b"ASIDESNP";
const VERSION: u32 = 1;

pub(crate) fn path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("snap-{gen:010}.bin"))
}

/// Generations of the snapshots in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>> {
    crate::wal::generations(dir, "snap-", ".bin")
}

pub(crate) fn write(dir: &Path, gen: u64, docs: &[Doc]) -> Result<()> {
    let mut body = Vec::new();
    put_u32(&mut body, docs.len() as u32);
    docs.iter().for_each(|d| put_doc(&mut body, d));
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    out.extend_from_slice(&body);
    put_u32(&mut out, crc32fast::hash(&body));
    crate::write_atomic(&path(dir, gen), &out)
}

pub(crate) fn read(p: &Path) -> Result<Vec<Doc>> {
    let buf = std::fs::read(p).map_err(io_err(p))?;
    let bad = |m: &str| IndexError::Corrupt(format!("{}: {m}", p.display()));
    if buf.len() < 16 || &buf[..8] != MAGIC {
        return Err(bad("not a snapshot file"));
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4"));
    if version != VERSION {
        return Err(bad(&format!(
            "format version {version}, this server reads {VERSION}"
        )));
    }
    let body = &buf[12..buf.len() - 4];
    let crc = u32::from_le_bytes(buf[buf.len() - 4..].try_into().expect("4"));
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader::new(body);
    let n = r.u32()?;
    let docs = (0..n).map(|_| r.doc()).collect::<Result<Vec<_>>>()?;
    if !r.done() {
        return Err(bad("trailing bytes"));
    }
    Ok(docs)
}
