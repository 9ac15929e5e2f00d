//! Walking every record of the deployment, shard by shard: `engram store export` and the
//! cluster-wide census of `engram store stats`.
//!
//! Each shard's keys live on one master (one hash tag, one slot), so a shard is read by
//! SCAN on that master with the shard's key prefix as the pattern, then MGET of the
//! records found (one slot, one command). SCAN sees every key that exists for the whole
//! walk and may see the others or not: the walk is a consistent copy only while nothing
//! writes, like any live export.

use std::io::Write;

use super::layout::SHARDS;
use super::{decode, RedisStore};
use crate::store::error::Result;
use crate::store::export::{write_record, ExportRecord};
use crate::store::records::{Document, MemoryEntry, Session};
use crate::store::Stats;

/// One record found by the walk.
pub(super) enum Found {
    Entry(MemoryEntry),
    Document(Document),
    Session(Session),
}

/// Keys asked for per SCAN call.
const SCAN_COUNT: usize = 1000;

impl RedisStore {
    /// Calls `f` with every entry, document and session of one shard.
    fn walk_shard(&self, shard: u16, f: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        let (pattern, prefix) = self.keys.shard_pattern(shard);
        let mut cursor = "0".to_owned();
        loop {
            let scan = redis::cmd("SCAN").arg(&cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT).clone();
            let (next, keys): (String, Vec<String>) = self.conn.query_on_master_of(&prefix, scan)?;
            // The record keys are `<prefix>m:<id>`, `<prefix>d:<id>` and
            // `<prefix>s:<scope>:<session>`; the indexes beside them are skipped.
            let records: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    let rest = &k[prefix.len().min(k.len())..];
                    rest.starts_with("m:") || rest.starts_with("d:") || rest.starts_with("s:")
                })
                .collect();
            if !records.is_empty() {
                let values: Vec<Option<Vec<u8>>> = self.conn.query(redis::cmd("MGET").arg(&records).clone())?;
                for (key, value) in records.into_iter().zip(values) {
                    // Deleted between the SCAN and the MGET: gone, not exported.
                    let Some(bytes) = value else { continue };
                    let found = match key.as_bytes()[prefix.len()] {
                        b'm' => Found::Entry(decode(key, &bytes)?),
                        b'd' => Found::Document(decode(key, &bytes)?),
                        _ => Found::Session(decode(key, &bytes)?),
                    };
                    f(found)?;
                }
            }
            if next == "0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    fn walk(&self, f: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        (0..SHARDS).try_for_each(|shard| self.walk_shard(shard, f))
    }

    /// Every record as one JSON line (the `engram store export` format).
    pub(super) fn export_lines(&self, out: &mut dyn Write) -> Result<usize> {
        let mut n = 0;
        self.walk(&mut |found| {
            let record = match &found {
                Found::Entry(e) => ExportRecord::Entry(e.into()),
                Found::Document(d) => ExportRecord::Document(d.into()),
                Found::Session(s) => ExportRecord::Session(s.into()),
            };
            write_record(out, &record)?;
            n += 1;
            Ok(())
        })?;
        out.flush()?;
        Ok(n)
    }

    /// Counts of what the whole deployment holds (a walk of every shard), with this
    /// node's caches for the index figures.
    pub(super) fn census_all(&self) -> Result<Stats> {
        let mut stats = self.cache_stats();
        stats.entries = 0;
        stats.entries_by_kind.clear();
        self.walk(&mut |found| {
            match found {
                Found::Entry(e) => {
                    stats.entries += 1;
                    *stats.entries_by_kind.entry(e.kind().name().to_owned()).or_default() += 1;
                }
                Found::Document(_) => stats.documents += 1,
                Found::Session(_) => stats.sessions += 1,
            }
            Ok(())
        })?;
        Ok(stats)
    }
}
