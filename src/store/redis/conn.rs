//! The connection to the cluster: the `redis` crate's async cluster client (it follows
//! MOVED/ASK redirections and refreshes the slot map after a failover), driven by a
//! small runtime of its own so that the store's synchronous callers — the blocking pool,
//! the CLI — can wait on it from any thread.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, RedisError, Script};

use crate::store::error::{Result, StoreError};

/// Applies a commit in one slot, all or nothing. ARGV: the guard count, then per guard
/// (key index, "eq" | "absent", expected value); the op count, then per op (name, key
/// index, a, b). Answers "ok", or "conflict" and the key whose guard failed (nothing
/// written then). Scripts run atomically on the master of the slot.
const COMMIT_LUA: &str = r#"
local i = 1
local guards = tonumber(ARGV[i]); i = i + 1
for _ = 1, guards do
  local key = KEYS[tonumber(ARGV[i])]
  local mode, want = ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local have = redis.call('GET', key)
  if mode == 'absent' then
    if have then return {'conflict', key} end
  elseif have ~= want then
    return {'conflict', key}
  end
end
local ops = tonumber(ARGV[i]); i = i + 1
for _ = 1, ops do
  local op, key, a, b = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if op == 'set' then redis.call('SET', key, a)
  elseif op == 'del' then redis.call('DEL', key)
  elseif op == 'delifeq' then
    if redis.call('GET', key) == a then redis.call('DEL', key) end
  elseif op == 'zadd' then redis.call('ZADD', key, 0, a)
  elseif op == 'zrem' then redis.call('ZREM', key, a)
  elseif op == 'zadds' then redis.call('ZADD', key, tonumber(a), b)
  elseif op == 'sadd' then redis.call('SADD', key, a)
  elseif op == 'srem' then redis.call('SREM', key, a)
  elseif op == 'hset' then redis.call('HSET', key, a, b)
  elseif op == 'hdelifeq' then
    if redis.call('HGET', key, a) == b then redis.call('HDEL', key, a) end
  elseif op == 'xadd' then redis.call('XADD', key, 'MAXLEN', '~', a, '*', 'c', b)
  else return redis.error_reply('unknown op ' .. op) end
end
return {'ok'}
"#;

/// What became of a commit.
pub enum Reply {
    /// A guard failed on this key: nothing was written.
    Conflict(String),
    /// Written on the master; `Err` when fewer replicas than asked acknowledged it.
    Committed(Result<()>),
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    handle: tokio::runtime::Handle,
    link: Arc<Link>,
    commit: Script,
}

/// After this many requests in a row time out, the connection is rebuilt from scratch.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// The live cluster connection and what it takes to replace it. The client library
/// repairs its own node connections and slot map after a failover, but on a loaded
/// machine it has been seen to go on timing out every request for minutes after the
/// dead master came back as a replica; a new connection, which reads the slot map
/// afresh and opens new sockets, answers at once.
struct Link {
    client: ClusterClient,
    current: RwLock<ClusterConnection>,
    timeouts_in_a_row: AtomicU32,
    reconnecting: AtomicBool,
}

impl Link {
    fn current(&self) -> ClusterConnection {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts timeouts in a row; a success resets the count.
    fn observe<T>(self: &Arc<Self>, result: &std::result::Result<T, RedisError>, handle: &tokio::runtime::Handle) {
        match result {
            Err(e) if e.is_timeout() => {
                let n = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_BEFORE_RECONNECT && !self.reconnecting.swap(true, Ordering::AcqRel) {
                    let link = self.clone();
                    handle.spawn(async move { link.reconnect().await });
                }
            }
            Err(_) => {}
            Ok(_) => self.timeouts_in_a_row.store(0, Ordering::Relaxed),
        }
    }

    async fn reconnect(&self) {
        tracing::warn!(
            timeouts = self.timeouts_in_a_row.load(Ordering::Relaxed),
            "redis cluster requests keep timing out; opening a new connection"
        );
        match tokio::time::timeout(Duration::from_secs(10), self.client.get_async_connection()).await {
            Ok(Ok(fresh)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                tracing::info!("reconnected to the redis cluster");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reconnecting to the redis cluster failed; the old connection stays")
            }
            Err(_) => tracing::warn!("reconnecting to the redis cluster took over 10 s; the old connection stays"),
        }
        self.reconnecting.store(false, Ordering::Release);
    }
}

/// Keeps the connection's runtime alive (dropped with the store).
pub struct ConnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ConnRuntime {
    fn drop(&mut self) {
        // The store may be dropped on an async worker, where waiting for the runtime's
        // threads is not allowed: let them wind down on their own.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Conn {
    pub fn open(urls: &[String]) -> Result<(Conn, ConnRuntime)> {
        if urls.is_empty() {
            return Err(StoreError::Invalid(
                "store.backend is redis-cluster but store.redis_urls is empty (ENGRAM_STORE__REDIS_URLS)".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("engram-redis")
            .enable_all()
            .build()
            .map_err(StoreError::Io)?;
        let client: ClusterClient = ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            // A failover takes the cluster's node timeout plus an election: keep
            // retrying through it rather than failing the request at once.
            .retries(12)
            .build()
            .map_err(|e| StoreError::Invalid(format!("store.redis_urls: {e}")))?;
        let conn = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), client.get_async_connection())
                    .await
                    .map_err(|_| unavailable("no answer from the cluster within 30 s"))?
                    .map_err(unavailable)
            })
            .map_err(|e| StoreError::Unavailable(format!("connecting to {}: {e}", urls.join(", "))))?;
        let link = Link {
            client,
            current: RwLock::new(conn),
            timeouts_in_a_row: AtomicU32::new(0),
            reconnecting: AtomicBool::new(false),
        };
        let conn = Conn { handle: runtime.handle().clone(), link: Arc::new(link), commit: Script::new(COMMIT_LUA) };
        Ok((conn, ConnRuntime(Some(runtime))))
    }

    /// Runs `f` on the connection's runtime and waits for it from this thread.
    fn block<T: Send + 'static>(
        &self,
        f: impl FnOnce(
                ClusterConnection,
            ) -> std::pin::Pin<Box<dyn Future<Output = std::result::Result<T, RedisError>> + Send>>
            + Send
            + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let conn = self.link.current();
        let (link, handle) = (self.link.clone(), self.handle.clone());
        self.handle.spawn(async move {
            let result = f(conn).await;
            link.observe(&result, &handle);
            let _ = tx.send(result);
        });
        rx.recv().expect("the redis runtime dropped a request").map_err(unavailable)
    }

    /// One command, routed by its key.
    pub fn query<T: FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> Result<T> {
        self.block(move |mut c| Box::pin(async move { cmd.query_async::<T>(&mut c).await }))
    }

    /// One command, sent to the master of `key`'s slot whatever the command's own keys
    /// (SCAN has none).
    pub fn query_on_master_of<T: FromRedisValue + Send + 'static>(&self, key: &str, cmd: Cmd) -> Result<T> {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            key.as_bytes(),
            SlotAddr::Master,
        )));
        self.block(move |mut c| {
            Box::pin(async move {
                let value = c.route_command(cmd, route).await?;
                Ok(redis::from_redis_value::<T>(value)?)
            })
        })
    }

    /// Many commands at once (each routed by its key), answers in order.
    pub fn query_all<T: FromRedisValue + Send + 'static>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        self.block(move |c| {
            Box::pin(async move {
                // Spawned together, they go out pipelined on the nodes' connections.
                let tasks: Vec<_> = cmds
                    .into_iter()
                    .map(|cmd| {
                        let mut c = c.clone();
                        tokio::spawn(async move { cmd.query_async::<T>(&mut c).await })
                    })
                    .collect();
                let mut out = Vec::with_capacity(tasks.len());
                for task in tasks {
                    out.push(task.await.map_err(|e| RedisError::from(std::io::Error::other(e)))??);
                }
                Ok(out)
            })
        })
    }

    /// Runs the commit script in the slot of `keys` (all in one slot), then waits until
    /// `replicas` replicas hold it.
    pub fn commit(&self, keys: Vec<String>, args: Vec<Vec<u8>>, replicas: u32, wait_timeout_ms: u64) -> Result<Reply> {
        let script = self.commit.clone();
        let route_key = keys.first().cloned().unwrap_or_default();
        self.block(move |mut c| {
            Box::pin(async move {
                let mut invocation = script.prepare_invoke();
                for k in &keys {
                    invocation.key(k);
                }
                for a in &args {
                    invocation.arg(a.as_slice());
                }
                let reply: Vec<String> = invocation.invoke_async(&mut c).await?;
                if reply.first().map(String::as_str) == Some("conflict") {
                    return Ok(Reply::Conflict(reply.get(1).cloned().unwrap_or_default()));
                }
                if replicas > 0 {
                    // WAIT counts what this connection wrote to that master so far:
                    // routed to the slot's master, it covers the script above.
                    let mut wait = redis::cmd("WAIT");
                    wait.arg(replicas).arg(wait_timeout_ms);
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                        route_key.as_bytes(),
                        SlotAddr::Master,
                    )));
                    let acked = match c.route_command(wait, route).await {
                        Ok(v) => redis::from_redis_value::<i64>(v).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    return Ok(Reply::Committed(match acked {
                        Ok(n) if n >= replicas as i64 => Ok(()),
                        Ok(n) => Err(StoreError::Unavailable(format!(
                            "the write reached the master's log but only {n} of {replicas} replicas within \
                             {wait_timeout_ms} ms; it may or may not survive a failover"
                        ))),
                        Err(e) => Err(StoreError::Unavailable(format!(
                            "the write reached the master's log, but waiting for its replicas failed ({e}); \
                             it may or may not survive a failover"
                        ))),
                    }));
                }
                Ok(Reply::Committed(Ok(())))
            })
        })
    }
}
