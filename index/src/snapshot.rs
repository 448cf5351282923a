//! Snapshots: a collection's slots and its graph in one file,
//! `ASIDESNP | format version u32 | body | crc32(body) u32`, written to a temp file,
//! fsynced and renamed. Snapshot `snap-{g}` holds every change logged in segments
//! before `g`; the previous snapshot and its segments are kept as a fallback.
//!
//! Body, version 2: the slot count, then every slot as a document (a tombstone has
//! an empty id and keeps its vector, which the graph still walks through), then the
//! number of slots the graph holds and its links ([`crate::graph::Graph::encode`]).
//! Version 1 (live documents only, the graph rebuilt on open) is still read.

use std::path::{Path, PathBuf};

use crate::error::{io_err, IndexError, Result};
use crate::wal::{put_u32, Doc, Reader};

const MAGIC: &[u8; 8] = b"ASIDESNP";
const VERSION: u32 = 2;

/// A snapshot as read: slots (empty id = tombstone), and the graph over the first
/// `indexed` of them, still encoded (none in version 1).
pub(crate) struct Snapshot {
    pub slots: Vec<Doc>,
    pub indexed: usize,
    pub links: Option<Vec<u8>>,
}

pub(crate) fn path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("snap-{gen:010}.bin"))
}

/// Generations of the snapshots in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>> {
    crate::wal::generations(dir, "snap-", ".bin")
}

/// Writes a snapshot whose body `fill` appends (slots, then graph).
pub(crate) fn write(
    dir: &Path,
    gen: u64,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    fill(&mut out)?;
    let crc = crc32fast::hash(&out[12..]);
    put_u32(&mut out, crc);
    crate::write_atomic(&path(dir, gen), &out)
}

pub(crate) fn read(p: &Path) -> Result<Snapshot> {
    let buf = std::fs::read(p).map_err(io_err(p))?;
    let bad = |m: &str| IndexError::Corrupt(format!("{}: {m}", p.display()));
    if buf.len() < 16 || &buf[..8] != MAGIC {
        return Err(bad("not a snapshot file"));
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4"));
    if version != 1 && version != VERSION {
        return Err(bad(&format!(
            "format version {version}, this server reads 1 and {VERSION}"
        )));
    }
    let body = &buf[12..buf.len() - 4];
    let crc = u32::from_le_bytes(buf[buf.len() - 4..].try_into().expect("4"));
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader::new(body);
    let n = r.u32()?;
    let slots = (0..n).map(|_| r.doc()).collect::<Result<Vec<_>>>()?;
    if version == 1 {
        if !r.done() {
            return Err(bad("trailing bytes"));
        }
        return Ok(Snapshot {
            slots,
            indexed: 0,
            links: None,
        });
    }
    let indexed = r.u32()? as usize;
    if indexed > slots.len() {
        return Err(bad(&format!(
            "graph over {indexed} slots, the snapshot has {}",
            slots.len()
        )));
    }
    Ok(Snapshot {
        slots,
        indexed,
        links: Some(r.rest().to_vec()),
    })
}
