//! Starting and stopping the release `sluice` binary, on a database of its own,
//! and the seed-design reference server, and reading what the kernel says about
//! them (resident memory, CPU time).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::load::Target;

/// Where a scenario's servers keep their data: a fresh SQLite file in a
/// temporary folder, or a PostgreSQL database.
pub struct Database {
    url: String,
    /// The SQLite file's folder, removed on drop.
    _dir: Option<tempfile::TempDir>,
    /// A database this tool created on a PostgreSQL server, dropped on drop.
    created_pg: Option<PgDatabase>,
}

struct PgDatabase {
    maintenance_url: String,
    name: String,
}

/// How to make a scenario's database.
#[derive(Debug, Clone)]
pub enum DatabaseSpec {
    /// A fresh SQLite file under this folder.
    Sqlite { parent: PathBuf },
    /// A PostgreSQL URL. With `fresh`, each scenario gets a new database on that
    /// server (created and dropped with `psql`); without, the URL is used as is.
    Postgres { url: String, fresh: bool },
}

impl DatabaseSpec {
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { parent } => format!(
                "SQLite, a fresh file per scenario under {} ({})",
                parent.display(),
                filesystem_of(parent)
            ),
            Self::Postgres { url, fresh: true } => {
                format!("PostgreSQL at {url}, a fresh database per scenario")
            }
            Self::Postgres { url, fresh: false } => {
                format!("PostgreSQL at {url}, used as is (shared by every scenario)")
            }
        }
    }

    pub fn create(&self, label: &str) -> anyhow::Result<Database> {
        match self {
            Self::Sqlite { parent } => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("sluice-bench-{label}-"))
                    .tempdir_in(parent)
                    .with_context(|| {
                        format!("creating a temporary folder in {}", parent.display())
                    })?;
                Ok(Database {
                    url: format!("sqlite://{}", dir.path().join("bench.db").display()),
                    _dir: Some(dir),
                    created_pg: None,
                })
            }
            Self::Postgres { url, fresh: false } => Ok(Database {
                url: url.clone(),
                _dir: None,
                created_pg: None,
            }),
            Self::Postgres { url, fresh: true } => {
                let (base, query) = split_pg_url(url);
                // Labels like `memory-empty` are not SQL identifiers as they are.
                let label = label.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                let name = format!("sluice_bench_{}_{label}", std::process::id());
                let maintenance_url = format!("{base}/postgres{query}");
                psql(
                    &maintenance_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                psql(&maintenance_url, &format!("CREATE DATABASE {name}"))?;
                Ok(Database {
                    url: format!("{base}/{name}{query}"),
                    _dir: None,
                    created_pg: Some(PgDatabase {
                        maintenance_url,
                        name,
                    }),
                })
            }
        }
    }
}

impl Database {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(pg) = &self.created_pg {
            let _ = psql(
                &pg.maintenance_url,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg.name),
            );
        }
    }
}

/// `postgres://user@host:port/db?opts` as (`postgres://user@host:port`, `?opts`).
fn split_pg_url(url: &str) -> (String, String) {
    let (without_query, query) = match url.find('?') {
        Some(i) => (&url[..i], url[i..].to_string()),
        None => (url, String::new()),
    };
    let after_scheme = without_query.find("://").map_or(0, |i| i + 3);
    let base = match without_query[after_scheme..].find('/') {
        Some(i) => &without_query[..after_scheme + i],
        None => without_query,
    };
    (base.to_string(), query)
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .context("running psql (install postgresql-client, or pass --pg-reuse)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The file system type under `path`, from /proc/mounts (tmpfs makes fsync
/// free, so durable-write figures measured there would flatter the service).
pub fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "file system unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, mount, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fstype.to_string()))
        })
        .max()
        .map_or_else(|| "file system unknown".into(), |(_, t)| t)
}

/// A running `sluice serve`.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// What a server is started with, besides its database and address.
pub struct ServerConfig<'a> {
    pub binary: &'a Path,
    /// Extra `sluice serve` flags, e.g. `["--interval", "1h"]`.
    pub args: Vec<String>,
    /// `RUST_LOG` for the server; `None` keeps the service's default (`info`).
    pub rust_log: Option<&'a str>,
    /// Where the server's stderr goes.
    pub log_dir: &'a Path,
}

impl Server {
    pub fn start(config: &ServerConfig<'_>, db: &Database, label: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = config.log_dir.join(format!("server-{label}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(config.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--database")
            .arg(db.url())
            .args(&config.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // The service's own environment variables would override nothing given
        // as a flag, but could change what is not: start from a clean slate.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                command.env_remove(&key);
            }
        }
        match config.rust_log {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        let mut server = Self { child, addr, log };
        wait_listening(&mut server.child, addr, &server.log, "the server")?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the server's stderr.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails if the server has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server died ({status}); its log:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Resident and peak resident memory, in bytes.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading the server's /proc status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .context("malformed /proc/<pid>/status")?
                .parse()?;
            Ok(kb * 1024)
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }

    /// CPU time the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(&self.pid().to_string())
    }

    /// SIGTERM, then SIGKILL if it has not exited within 20 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("  (the server did not stop within 20 s of SIGTERM; killing it)");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Target for Server {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn cpu_time(&self) -> Duration {
        Server::cpu_time(self)
    }
}

/// The seed-design reference server (`node server.js PORT`, Express, in
/// memory), started in a folder that holds its `server.js` and `node_modules/`.
/// Killed on drop: it keeps nothing worth a clean shutdown.
pub struct SeedServer {
    child: Child,
    addr: SocketAddr,
}

impl SeedServer {
    /// Starts `node server.js <free port>` in `dir`, its stdout and stderr in
    /// `<log_dir>/server-<label>.log`, and waits until it listens.
    pub fn start(dir: &Path, log_dir: &Path, label: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = log_dir.join(format!("server-{label}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("node")
            .arg("server.js")
            .arg(port.to_string())
            .current_dir(dir)
            // Its own defaults: one batch per 5 s, a 50 ms simulated fetch.
            .env_remove("PORT")
            .env_remove("SEEDREF_INTERVAL_MS")
            .env_remove("SEEDREF_FETCH_MS")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting `node server.js` (is node installed?)")?;
        let mut server = Self { child, addr };
        wait_listening(&mut server.child, addr, &log, "the seed-design server")?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Target for SeedServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn cpu_time(&self) -> Duration {
        cpu_time_of(&self.pid().to_string())
    }
}

impl Drop for SeedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 60 s) until `child` accepts TCP connections on `addr`; fails
/// with the tail of its log if it exits first or never listens.
fn wait_listening(
    child: &mut Child,
    addr: SocketAddr,
    log: &Path,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited at start ({status}); its log:\n{}",
                log_tail(log)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on {addr} within 60 s; its log:\n{}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

/// A port nobody listens on right now (the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// User + system CPU time of a process (`self` for this one), from
/// /proc/<pid>/stat, in clock ticks of 1/100 s.
pub fn cpu_time_of(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces; the fields after it are plain.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14, stime 15.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / clock_ticks_per_second())
}

/// Busy CPU time of the whole machine since boot (every core, every process,
/// interrupts), from the first line of /proc/stat.
pub fn machine_busy_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = stat.lines().next() else {
        return Duration::ZERO;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Duration::from_millis(busy * 1000 / clock_ticks_per_second())
}

/// The load average over the last minute.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_split_at_the_database() {
        assert_eq!(
            split_pg_url("postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
            (
                "postgres://postgres@127.0.0.1:5432".to_string(),
                "?sslmode=disable".to_string()
            )
        );
        assert_eq!(
            split_pg_url("postgres://127.0.0.1"),
            ("postgres://127.0.0.1".to_string(), String::new())
        );
    }

    #[test]
    fn own_cpu_time_reads() {
        let start = cpu_time_of("self");
        let mut x = 0u64;
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_time_of("self") >= start);
    }
}
