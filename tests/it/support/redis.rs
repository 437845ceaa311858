//! Real `redis-server` processes on free ports, in temporary directories: single servers that
//! can be killed and restarted (with or without their data), and a local three-master cluster.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{WAIT, within};

/// A free port for a single redis-server (30000–32699; see [`port_in`]).
pub(crate) fn free_port() -> u16 {
    port_in(30_000, 2_700)
}

/// A free port for a cluster node (10000–19999): Redis listens for the cluster bus 10,000
/// above it, so its bus port (20000–29999) must be free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = port_in(10_000, 10_000);
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A free port in `base..base + span`, below the kernel's ephemeral range (32768 and up):
/// nothing else this machine runs is handed such a port by `bind(0)` or as a connection's
/// source port, so it stays free until the server binds it. A counter keeps this process's
/// choices apart; the process id spreads concurrent test processes.
fn port_in(base: u16, span: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let spread = (std::process::id() % u32::from(span)) as u16;
        let port = base + (spread.wrapping_mul(31).wrapping_add(n) % span);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "redis-{tag}-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Sends one inline command and returns the raw reply (enough for PING and CLUSTER INFO).
pub async fn command(port: u16, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("{line}\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The (channel, subscribers) pairs of a `PUBSUB NUMSUB`/`SHARDNUMSUB` reply in RESP: an array
/// alternating bulk-string names and integer counts.
pub fn subscriber_counts(reply: &str) -> Vec<(String, u64)> {
    let mut lines = reply.split("\r\n");
    let header = lines.next().unwrap_or_default();
    let items: usize = header
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a RESP array: {reply:?}"));
    let mut pairs = Vec::new();
    for _ in 0..items / 2 {
        let length = lines.next().unwrap_or_default();
        assert!(
            length.starts_with('$'),
            "expected a bulk string in {reply:?}"
        );
        let name = lines.next().unwrap_or_default().to_owned();
        let count = lines
            .next()
            .and_then(|line| line.strip_prefix(':'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("expected an integer in {reply:?}"));
        pairs.push((name, count));
    }
    pairs
}

async fn wait_ready(port: u16) {
    within(WAIT, "redis-server answers PING", async {
        loop {
            if let Ok(reply) = command(port, "PING").await {
                if reply.starts_with("+PONG") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// One redis-server; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A server that keeps nothing on disk: a restart loses every key.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// A server that writes every command to its append-only file: a restart keeps the data.
    pub async fn start_persistent() -> Self {
        Self::launch(true).await
    }

    async fn launch(persistent: bool) -> Self {
        let mut server = Self {
            port: free_port(),
            dir: temp_dir("single"),
            persistent,
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/check installs it)");
        self.child = Some(child);
        wait_ready(self.port).await;
    }

    /// SIGKILL: nothing is flushed, clients see the connection drop.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            within(WAIT, "kill redis", child.kill())
                .await
                .expect("kill redis");
        }
    }

    /// SIGSTOP: the process stays, its connections stay open, and nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running");
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} redis-server failed");
    }

    /// Starts again on the same port (with its data only if persistent).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// A raw command's reply, e.g. `INFO commandstats`.
    pub async fn command(&self, line: &str) -> String {
        command(self.port, line).await.expect("redis command")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// At most this many clusters at once: forming one is slow under load, and nine redis-servers
/// per pair of tests is plenty on two cores.
static CLUSTER_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Three masters, no replicas, every slot assigned; killed when dropped.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    _children: Vec<Child>,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let slot = within(WAIT * 12, "a cluster slot", CLUSTER_SLOTS.acquire())
            .await
            .expect("semaphore open");
        let dir = temp_dir("cluster");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server");
            children.push(child);
            wait_ready(port).await;
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = within(
            WAIT * 3,
            "redis-cli --cluster create",
            Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        )
        .await
        .expect("run redis-cli");
        assert!(status.success(), "cluster create failed");
        within(WAIT * 6, "cluster state ok on every node", async {
            for &port in &ports {
                loop {
                    let info = command(port, "CLUSTER INFO").await.unwrap_or_default();
                    if info.contains("cluster_state:ok") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .await;
        Self {
            ports,
            dir,
            _children: children,
            _slot: slot,
        }
    }

    /// A `redis+cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
