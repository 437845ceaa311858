//! Redis as production runs it: over TLS with a test certificate authority, and behind
//! Sentinel with a primary and a replica. Real `redis-server` processes on free ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::redis::{command, free_port, temp_dir};
use super::{WAIT, within};

/// A certificate authority, a server certificate for 127.0.0.1 and a client certificate,
/// as PEM files in a temporary directory.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCa {
    pub fn generate(tag: &str) -> Self {
        let dir = temp_dir(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Tidings test CA {tag}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let leaf = |name: &str, names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca).unwrap();
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let (server_cert, server_key) =
            leaf("server", vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf("client", vec!["tidings-node".into()]);
        Self {
            ca: write("ca.pem", ca.pem()),
            dir,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server that speaks only TLS (and, if asked, wants a client certificate and a
/// password); killed when dropped.
pub struct TlsRedis {
    pub port: u16,
    _child: Child,
}

impl TlsRedis {
    pub async fn start(ca: &TestCa, client_certificates: bool, password: Option<&str>) -> Self {
        let port = free_port();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&ca.server_cert)
            .arg("--tls-key-file")
            .arg(&ca.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.ca)
            .args([
                "--tls-auth-clients",
                if client_certificates { "yes" } else { "no" },
            ]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/check installs it)");
        within(WAIT, "TLS redis-server listens", async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Self {
            port,
            _child: child,
        }
    }
}

/// A primary, a replica and two Sentinels watching them as `mymaster`; killed when dropped.
pub struct SentinelSet {
    pub replica: u16,
    pub sentinels: Vec<u16>,
    dir: PathBuf,
    _children: Vec<Child>,
}

pub const MASTER: &str = "mymaster";

fn spawn_redis(args: &[String], dir: &Path) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed (scripts/check installs it)")
}

async fn wait_for(port: u16, line: &str, needle: &str, what: &str) -> String {
    within(WAIT * 3, what, async {
        loop {
            if let Ok(reply) = command(port, line).await {
                if reply.contains(needle) {
                    return reply;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

impl SentinelSet {
    pub async fn start() -> Self {
        let dir = temp_dir("sentinel");
        let (primary, replica) = (free_port(), free_port());
        let server = |port: u16| -> Vec<String> {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut children = vec![spawn_redis(&server(primary), &dir)];
        let mut replica_args = server(replica);
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        children.push(spawn_redis(&replica_args, &dir));
        wait_for(
            replica,
            "INFO replication",
            "master_link_status:up",
            "replica in sync",
        )
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..2 {
            let port = free_port();
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds {MASTER} 2000\n\
                     sentinel failover-timeout {MASTER} 10000\n"
                ),
            )
            .unwrap();
            let args = vec![config.display().to_string(), "--sentinel".into()];
            children.push(spawn_redis(&args, &dir));
            sentinels.push(port);
        }
        for &port in &sentinels {
            // Each Sentinel must know the replica before it can fail over to it.
            let line = format!("SENTINEL REPLICAS {MASTER}");
            wait_for(
                port,
                &line,
                &replica.to_string(),
                "sentinel sees the replica",
            )
            .await;
        }
        Self {
            replica,
            sentinels,
            dir,
            _children: children,
        }
    }

    /// `redis+sentinel://…/mymaster` over both Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// `SENTINEL FAILOVER`, then waits until the Sentinel names the replica as primary.
    pub fn failover(&self) -> tokio::task::JoinHandle<()> {
        let (sentinel, replica) = (self.sentinels[0], self.replica);
        tokio::spawn(async move {
            let reply = command(sentinel, &format!("SENTINEL FAILOVER {MASTER}"))
                .await
                .unwrap();
            assert!(reply.starts_with("+OK"), "SENTINEL FAILOVER: {reply}");
            let line = format!("SENTINEL GET-MASTER-ADDR-BY-NAME {MASTER}");
            wait_for(sentinel, &line, &replica.to_string(), "failover done").await;
        })
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
