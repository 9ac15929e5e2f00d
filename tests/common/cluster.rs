//! A real Redis Cluster (3 masters, 3 replicas) on loopback for the tests of the
//! `redis-cluster` backend, started by the same script as `make cluster`
//! (`docker/redis-cluster.sh`, which installs `redis-server` when it is missing) and
//! stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;

use engram::store::{BackendKind, StoreConfig};

pub struct Cluster {
    dir: tempfile::TempDir,
    pub urls: Vec<String>,
    pub base_port: u16,
    external: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/redis-cluster.sh")
}

/// Six ports nobody listens on, different for every cluster a test process starts
/// (test binaries run in parallel: each gets its own range from its process id).
fn free_base_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + ((std::process::id() as u16 % 400) * 60 + slot * 6) % 20_000;
        // Cluster bus ports are the data ports + 10000: both must be free.
        let free = (base..base + 6).all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        });
        if free {
            return base;
        }
    }
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // A cluster already running (while developing: `ENGRAM_TEST_REDIS_URLS=redis://…`);
        // each test writes under tenants of its own, so runs do not meet.
        if let Ok(urls) = std::env::var("ENGRAM_TEST_REDIS_URLS") {
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            let base_port = urls[0].rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(7000);
            return Cluster { dir, urls, base_port, external: true };
        }
        let base_port = free_base_port();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .arg(base_port.to_string())
            .output()
            .expect("running docker/redis-cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the redis cluster did not start:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let urls = stdout.lines().last().unwrap_or_default().split(',').map(str::to_owned).collect();
        Cluster { dir, urls, base_port, external: false }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A store configuration for this cluster (`wait_replicas` replicas per write).
    pub fn config(&self, wait_replicas: u32) -> StoreConfig {
        StoreConfig {
            backend: BackendKind::RedisCluster,
            redis_urls: self.urls.clone(),
            redis_wait_replicas: wait_replicas,
            redis_follow_interval_ms: 20,
            data_dir: self.dir.path().join("unused"),
            ..Default::default()
        }
    }

    /// The environment that makes `engram serve` use this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ENGRAM_STORE__BACKEND".into(), "redis-cluster".into()),
            ("ENGRAM_STORE__REDIS_URLS".into(), self.urls.join(",")),
            ("ENGRAM_STORE__REDIS_FOLLOW_INTERVAL_MS".into(), "20".into()),
        ]
    }

    /// The pid of the master serving `port`'s node, from its pidfile.
    pub fn pid(&self, port: u16) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join(port.to_string()).join("redis.pid")).ok()?.trim().parse().ok()
    }

    /// `redis-cli` against one node.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts again every node of the cluster that is not running (as an operator, or a
    /// supervisor, would after a crash): it rejoins as a replica.
    pub fn restart_missing(&self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(self.dir.path())
            .arg(self.base_port.to_string())
            .output()
            .expect("running docker/redis-cluster.sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits until every master has a replica whose link is up (after a failover the
    /// restarted node first rejoins, then is told whom to follow, then syncs), so that a
    /// write waiting for one replica can be acknowledged again.
    pub fn wait_for_replicas(&self, within: std::time::Duration) {
        let started = std::time::Instant::now();
        loop {
            let masters = self.masters();
            let served = masters.len() == 3
                && masters.iter().all(|m| {
                    self.cli(*m, &["info", "replication"])
                        .lines()
                        .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
                });
            if served {
                return;
            }
            assert!(started.elapsed() < within, "masters still without an online replica after {within:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// The ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        (self.base_port..self.base_port + 6)
            .filter(|p| self.cli(*p, &["role"]).lines().next() == Some("master"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.external {
            return;
        }
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).output();
    }
}

/// Whether the tests run against the cluster backend (`ENGRAM_TEST_BACKEND=redis-cluster`).
pub fn cluster_backend() -> bool {
    std::env::var("ENGRAM_TEST_BACKEND").is_ok_and(|b| b == "redis-cluster")
}

/// One cluster for a whole test binary, started on first use. Statics are never
/// dropped, so a watchdog process stops it once this test process has exited.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = Cluster::start();
        if !cluster.external {
            let watchdog = format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; bash {script} stop {dir}",
                pid = std::process::id(),
                script = script().display(),
                dir = cluster.dir().display()
            );
            Command::new("bash")
                .args(["-c", &watchdog])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starting the cluster's watchdog");
        }
        cluster
    })
}

/// The environment that points `engram serve` at the backend the tests run against:
/// nothing for sled; for the cluster, the shared cluster and a namespace named after
/// `data_dir`.
pub fn backend_env(data_dir: &Path) -> Vec<(String, String)> {
    if !cluster_backend() {
        return Vec::new();
    }
    let mut env = shared().env();
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = blake3::hash(path.to_string_lossy().as_bytes()).to_hex();
    env.push(("ENGRAM_STORE__REDIS_NAMESPACE".into(), format!("test-{}", &digest[..16])));
    env
}
