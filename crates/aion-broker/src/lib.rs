//! The local Kafka-protocol broker: Nisshi (the maintained continuation of Tansu) with its SQLite
//! storage engine, on loopback.
//!
//! Used by `aion broker start|stop|status`, by the one-command loop and by integration tests
//! (a fresh broker on a free port in a temporary directory per test). Production uses a real
//! Kafka cluster; nothing else in AION Stream depends on this crate.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing::info;

/// The pinned broker version; `scripts/setup` installs exactly this one.
pub const NISSHI_VERSION: &str = "0.8.1";

/// The SQLite database in a data directory. Tansu 0.6 wrote `tansu.db`, whose schema Nisshi does
/// not read: a directory holding one starts afresh beside it.
const DATABASE: &str = "nisshi.db";
const OLD_DATABASE: &str = "tansu.db";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "nisshi {NISSHI_VERSION} not found at {0}: run `scripts/setup` (installs it into the \
         cache) or point AION_BROKER_BIN at a nisshi binary built with --features dynostore,libsql"
    )]
    NotInstalled(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("broker did not accept connections on {addr} within {secs} s; see {log}")]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        log: PathBuf,
    },
    #[error("broker exited during start-up ({status}); see {log}")]
    Exited {
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("no broker is running from {0} (no pid file)")]
    NotRunning(PathBuf),
    #[error(
        "port {0} on 127.0.0.1 is already in use (another broker?); choose another with --port"
    )]
    PortInUse(u16),
    #[error("creating the broker user {user} failed ({status}): {output}")]
    User {
        user: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The cache directory outside any clone: `$AION_CACHE_DIR`, else `~/.cache/aion`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AION_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("aion")
}

/// The broker binary: `$AION_BROKER_BIN`, else the one `scripts/setup` installs into the cache.
pub fn broker_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("AION_BROKER_BIN") {
        Some(p) => PathBuf::from(p),
        None => cache_dir()
            .join(format!("nisshi-{NISSHI_VERSION}"))
            .join("bin")
            .join("nisshi"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NotInstalled(path))
    }
}

/// A free loopback port (the OS picks one; a tiny race with other processes is accepted).
pub fn free_port() -> Result<u16> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(io_err("binding", Path::new("127.0.0.1:0")))?;
    let port = l
        .local_addr()
        .map_err(io_err("binding", Path::new("127.0.0.1:0")))?
        .port();
    Ok(port)
}

fn command(port: u16, data_dir: &Path) -> Result<Command> {
    fs::create_dir_all(data_dir).map_err(io_err("creating", data_dir))?;
    if data_dir.join(OLD_DATABASE).is_file() && !data_dir.join(DATABASE).is_file() {
        tracing::warn!(
            old = %data_dir.join(OLD_DATABASE).display(),
            "a Tansu 0.6 database is here; Nisshi cannot read it, so the broker starts empty \
             beside it (delete the old file once nothing in it is needed)"
        );
    }
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(broker_binary()?);
    cmd.arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        // Relative to the working directory: the data directory.
        .args(["--storage-engine", &format!("sqlite://{DATABASE}")])
        .current_dir(data_dir)
        .stdin(Stdio::null());
    let log = log_path(data_dir);
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err("opening", &log))?;
    let err = out.try_clone().map_err(io_err("opening", &log))?;
    cmd.stdout(out).stderr(err);
    Ok(cmd)
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("broker.log")
}

fn pid_path(data_dir: &Path) -> PathBuf {
    data_dir.join("broker.pid")
}

/// Starts the broker and waits until it accepts connections.
fn spawn_ready(mut cmd: Command, port: u16, data_dir: &Path) -> Result<Child> {
    // Readiness is "the port accepts connections": someone else listening there would pass it.
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Err(Error::PortInUse(port));
    }
    let mut child = cmd.spawn().map_err(io_err("starting", data_dir))?;
    wait_ready(
        &mut child,
        ([127, 0, 0, 1], port).into(),
        data_dir,
        Duration::from_secs(30),
    )?;
    Ok(child)
}

fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    data_dir: &Path,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Exited {
                status,
                log: log_path(data_dir),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(Error::NotReady {
                addr,
                secs: timeout.as_secs(),
                log: log_path(data_dir),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker owned by this process (tests, `aion up`); killed when dropped.
pub struct Broker {
    child: Child,
    port: u16,
    _temp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker on `port` storing into `data_dir` (created if missing).
    pub fn start(port: u16, data_dir: &Path) -> Result<Self> {
        let child = spawn_ready(command(port, data_dir)?, port, data_dir)?;
        info!(port, data_dir = %data_dir.display(), "broker started");
        Ok(Self {
            child,
            port,
            _temp: None,
        })
    }

    /// A fresh broker on a free port with its storage in a temporary directory (tests).
    pub fn start_temporary() -> Result<Self> {
        Self::temporary(Self::start)
    }

    /// A fresh broker like [`Broker::start_temporary`] that accepts only TLS connections
    /// (certificate chain and key in PEM) authenticated by SCRAM-SHA-512 as one of `users`
    /// (name, password): clients connect with `security.protocol=SASL_SSL`. Tests of secured
    /// clients; a production cluster sets this up itself.
    pub fn start_temporary_secured(
        cert: &Path,
        key: &Path,
        users: &[(&str, &str)],
    ) -> Result<Self> {
        Self::temporary(|port, data_dir| {
            // Users are created over the plaintext protocol, so first without TLS, then again
            // with it on the same storage.
            let mut open = Self::start(port, data_dir)?;
            for (user, password) in users {
                let out = Command::new(broker_binary()?)
                    .args([
                        "user",
                        "create",
                        "--broker",
                        &format!("tcp://127.0.0.1:{port}"),
                    ])
                    .args([user, password])
                    .output()
                    .map_err(io_err("starting", data_dir))?;
                if !out.status.success() {
                    return Err(Error::User {
                        user: user.to_string(),
                        status: out.status,
                        output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    });
                }
            }
            open.kill();
            let mut cmd = command(port, data_dir)?;
            cmd.arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                .arg("--authentication");
            let child = spawn_ready(cmd, port, data_dir)?;
            info!(port, "broker started, TLS and SCRAM required");
            Ok(Self {
                child,
                port,
                _temp: None,
            })
        })
    }

    /// `start` on a free port with a temporary directory that lives as long as the broker.
    fn temporary(start: impl Fn(u16, &Path) -> Result<Self>) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("aion-broker-")
            .tempdir()
            .map_err(io_err("creating", &std::env::temp_dir()))?;
        // The free port is an ephemeral one: an outgoing connection of a client running alongside
        // may take it before the broker binds it. Pick another.
        let mut attempts = 0;
        let mut broker = loop {
            match start(free_port()?, temp.path()) {
                Err(Error::PortInUse(_)) if attempts < 5 => attempts += 1,
                started => break started?,
            }
        };
        broker._temp = Some(temp);
        Ok(broker)
    }

    /// `bootstrap.servers` for this broker.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id (tests pause it with SIGSTOP to play an unresponsive broker).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the broker (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// State of a background broker started by `aion broker start`.
#[derive(Debug)]
pub enum Status {
    Running {
        pid: u32,
        port: u16,
    },
    /// A pid file exists but the process is gone (crashed or killed).
    Stale {
        pid: u32,
    },
    Stopped,
}

/// Starts a background broker that outlives this process; its pid and port are recorded in
/// `data_dir`. Returns the running broker's port if one is already running there.
pub fn start_background(port: u16, data_dir: &Path) -> Result<u16> {
    if let Status::Running { port, .. } = status(data_dir)? {
        return Ok(port);
    }
    // Its own process group: Ctrl-C in the starting terminal does not reach it.
    let mut cmd = command(port, data_dir)?;
    cmd.process_group(0);
    let child = spawn_ready(cmd, port, data_dir)?;
    let pid = pid_path(data_dir);
    fs::write(&pid, format!("{} {port}\n", child.id())).map_err(io_err("writing", &pid))?;
    Ok(port)
}

fn read_pid(data_dir: &Path) -> Result<Option<(u32, u16)>> {
    let path = pid_path(data_dir);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u32>);
            match (parts.next(), parts.next()) {
                (Some(Ok(pid)), Some(Ok(port))) => Ok(Some((pid, port as u16))),
                _ => Ok(None),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            action: "reading",
            path,
            source: e,
        }),
    }
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn status(data_dir: &Path) -> Result<Status> {
    Ok(match read_pid(data_dir)? {
        None => Status::Stopped,
        Some((pid, port)) if signal(pid, "-0") => Status::Running { pid, port },
        Some((pid, _)) => Status::Stale { pid },
    })
}

/// Stops a background broker (SIGTERM, then SIGKILL after 10 s) and removes its pid file.
pub fn stop_background(data_dir: &Path) -> Result<()> {
    let Some((pid, _)) = read_pid(data_dir)? else {
        return Err(Error::NotRunning(data_dir.to_owned()));
    };
    if signal(pid, "-TERM") {
        let deadline = Instant::now() + Duration::from_secs(10);
        while signal(pid, "-0") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if signal(pid, "-0") {
            signal(pid, "-KILL");
        }
    }
    let path = pid_path(data_dir);
    fs::remove_file(&path).map_err(io_err("removing", &path))
}
