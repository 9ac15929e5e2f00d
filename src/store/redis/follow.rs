//! Following the other nodes' writes: every node reads each shard's change stream
//! (written in the same script as the data) every `store.redis_follow_interval_ms`,
//! and applies to its caches the changes of the scopes it holds. A node that finds a
//! stream trimmed past where it last read has missed changes: it drops that shard's
//! scopes, which are read afresh on their next search.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use redis::streams::StreamReadReply;
use ulid::Ulid;

use super::cache::Change;
use super::layout::{self, ScopeKey};
use super::RedisStore;
use crate::store::error::Result;
use crate::store::records::now_ms;

/// Stream entries read per shard per round.
const READ_COUNT: usize = 512;

/// See the module documentation.
pub struct Follower {
    stop: Arc<AtomicBool>,
    lag_ms: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// A stream id, `<ms>-<seq>`, as numbers (ids compare as such, not as text).
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl Follower {
    /// Starts from the streams' current ends: the caches start empty, so nothing before
    /// now is needed.
    pub fn start(store: Weak<RedisStore>, interval_ms: u64) -> Result<Follower> {
        let mut positions = vec!["0-0".to_owned(); layout::SHARDS as usize];
        if let Some(s) = store.upgrade() {
            let cmds = (0..layout::SHARDS)
                .map(|shard| {
                    redis::cmd("XREVRANGE").arg(s.keys.changes(shard)).arg("+").arg("-").arg("COUNT").arg(1).clone()
                })
                .collect();
            let last: Vec<Vec<(String, HashMap<String, redis::Value>)>> = s.conn.query_all(cmds)?;
            for (shard, entries) in last.into_iter().enumerate() {
                if let Some((id, _)) = entries.into_iter().next() {
                    positions[shard] = id;
                }
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lag_ms = Arc::new(AtomicU64::new(0));
        let (stop2, lag2) = (stop.clone(), lag_ms.clone());
        let interval = Duration::from_millis(interval_ms.max(1));
        let thread = std::thread::Builder::new()
            .name("engram-follow".into())
            .spawn(move || {
                let mut failing_since: Option<std::time::Instant> = None;
                while !stop2.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    let Some(store) = store.upgrade() else { break };
                    match poll(&store, &mut positions, &lag2) {
                        Ok(()) => {
                            if failing_since.take().is_some() {
                                tracing::info!("following the change streams again");
                            }
                        }
                        Err(e) => {
                            if failing_since.is_none() {
                                tracing::warn!(error = %e, "reading the change streams failed; retrying");
                                failing_since = Some(std::time::Instant::now());
                            }
                        }
                    }
                }
            })
            .map_err(crate::store::StoreError::Io)?;
        Ok(Follower { stop, lag_ms, thread: Some(thread) })
    }

    /// How old the newest change read was when it was read, in ms (0 when idle).
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // The store may be dropped on the follower's own thread (it holds the last
            // strong reference for an instant): never join oneself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn poll(store: &RedisStore, positions: &mut [String], lag: &AtomicU64) -> Result<()> {
    let cmds = (0..layout::SHARDS)
        .map(|shard| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("STREAMS")
                .arg(store.keys.changes(shard))
                .arg(&positions[shard as usize])
                .clone()
        })
        .collect();
    let replies: Vec<Option<StreamReadReply>> = store.conn.query_all(cmds)?;
    for (shard, reply) in replies.into_iter().enumerate() {
        let Some(reply) = reply else { continue };
        let shard = shard as u16;
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        let Some(last) = entries.last().map(|e| e.id.clone()) else { continue };
        if store.cache.holds_shard(shard) && positions[shard as usize] != "0-0" {
            let first: Vec<(String, HashMap<String, redis::Value>)> = store.conn.query(
                redis::cmd("XRANGE").arg(store.keys.changes(shard)).arg("-").arg("+").arg("COUNT").arg(1).clone(),
            )?;
            let trimmed = first.first().is_some_and(|(id, _)| parse_id(id) > parse_id(&positions[shard as usize]));
            if trimmed {
                tracing::warn!(shard, "fell behind a trimmed change stream; dropping its scopes from the caches");
                store.cache.drop_scopes(store, |s| s.shard() == shard);
            }
        }
        let mut events: Vec<(bool, ScopeKey, Ulid)> = Vec::new();
        for entry in &entries {
            let Some(redis::Value::BulkString(payload)) = entry.map.get("c") else { continue };
            let payload = String::from_utf8_lossy(payload);
            let mut lines = payload.lines();
            if lines.next().and_then(|l| l.strip_prefix("node ")) == Some(store.node_id.as_str()) {
                continue;
            }
            for line in lines {
                let (added, rest) = match line.split_at_checked(1) {
                    Some(("+", rest)) => (true, rest),
                    Some(("-", rest)) => (false, rest),
                    _ => continue,
                };
                let Some((scope, id)) = rest.split_once(' ') else { continue };
                let (Some(scope), Ok(id)) = (ScopeKey::from_hex(scope), id.parse::<Ulid>()) else { continue };
                if store.cache.wants(&scope) {
                    events.push((added, scope, id));
                }
            }
        }
        if !events.is_empty() {
            let wanted: Vec<Ulid> = events.iter().filter(|(added, _, _)| *added).map(|(_, _, id)| *id).collect();
            let mut fetched: HashMap<Ulid, crate::store::records::MemoryEntry> =
                store.read_entries_in(shard, &wanted)?.into_iter().filter_map(|e| Some((e.ulid()?, e))).collect();
            let changes: Vec<Change> = events
                .into_iter()
                .filter_map(|(added, scope, id)| match added {
                    true => fetched.remove(&id).map(Change::Added),
                    false => Some(Change::Removed { id, scope }),
                })
                .collect();
            store.cache.apply(store, changes);
        }
        let (ms, _) = parse_id(&last);
        lag.store((now_ms().max(0) as u64).saturating_sub(ms), Ordering::Relaxed);
        positions[shard as usize] = last;
    }
    Ok(())
}
