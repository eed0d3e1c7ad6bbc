//! `sluice-bench`: starts the release `sluice` binary on a temporary database
//! and measures it over HTTP, scenario by scenario, against the targets of
//! issue 6. It builds nothing: run `cargo build --release` first.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p sluice-bench -- --quick            # every scenario, ~3 min
//! cargo run --release -p sluice-bench -- --scenario ingest  # one scenario, full length
//! cargo run --release -p sluice-bench -- --scenario soak    # issue 7's soak, ~12 min
//! cargo run --release -p sluice-bench -- --scenario adaptive  # issue 12's adaptive rate, ~2 min
//! cargo run --release -p sluice-bench -- --scenario claim     # issue 13's claim cost, no server
//! cargo run --release -p sluice-bench -- --scenario versus-seed  # issue 14: ratios to the seed's design
//! ```

mod adaptive;
mod claim;
mod hostile;
mod http;
mod load;
mod prune;
mod report;
mod scenarios;
mod seed;
mod server;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use crate::report::Summary;
use crate::scenarios::{Bench, Settings};
use crate::server::DatabaseSpec;

/// Benchmarks the release `sluice` binary: load over kept-alive HTTP/1.1
/// connections, memory with a deep queue, one huge request, the unthrottled
/// dispatcher, and rate exactness; and, only when asked, a soak at half the
/// peak load. Run `cargo build --release` first.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version)]
struct Args {
    /// Scenarios to run, comma-separated. `all` is the six of issue 6; the
    /// soak (10+ minutes), the hostile ones, `prune` (issue 11), `adaptive`,
    /// `claim` and `versus-seed` run only when named: `--scenario soak`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,

    /// Shorter everything, so that `all` takes about 3 minutes.
    #[arg(long)]
    quick: bool,

    /// The server binary [default: target/release/sluice beside this tool].
    #[arg(long)]
    server: Option<PathBuf>,

    /// A PostgreSQL URL to bench the PostgreSQL store instead of SQLite. Each
    /// scenario gets a fresh database on that server (created and dropped with
    /// psql), unless --pg-reuse.
    #[arg(long)]
    database: Option<String>,

    /// Use --database as it is, for every scenario (it should be empty).
    #[arg(long)]
    pg_reuse: bool,

    /// Where the temporary SQLite databases go [default: the system's temp
    /// folder]. Use a real disk: on tmpfs, fsync costs nothing.
    #[arg(long)]
    tmpdir: Option<PathBuf>,

    /// Keep the servers' logs in this folder (otherwise a temporary one).
    #[arg(long)]
    log_dir: Option<PathBuf>,

    /// RUST_LOG for the servers [default: unset, the service's own default].
    #[arg(long)]
    server_rust_log: Option<String>,

    /// Concurrent connections for the load scenarios.
    #[arg(long, default_value_t = 64)]
    connections: usize,

    /// Ids in each POST of the load.
    #[arg(long, default_value_t = 10)]
    ids_per_request: usize,

    /// Measured time of the ingest and status scenarios [default: 20s; 10s
    /// with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Unmeasured warm-up before each load.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,

    /// Ingestions created for GET /status to read.
    #[arg(long, default_value_t = 10_000)]
    status_ingestions: usize,

    /// Depths at which to read the server's memory, comma-separated; speeds are
    /// measured again at the last [default: 1000000,10000000].
    #[arg(long, value_delimiter = ',')]
    memory_ids: Vec<u64>,

    /// Ids per POST when filling the queue.
    #[arg(long, default_value_t = 100_000)]
    memory_chunk: usize,

    /// Measured time of each load at depth and on the empty queue it is
    /// compared with [default: 10s; 5s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    depth_duration: Option<Duration>,

    /// Ids in the one big request.
    #[arg(long, default_value_t = 1_000_000)]
    big_ids: usize,

    /// How many big requests, one after another [default: 3; 1 with --quick].
    #[arg(long)]
    big_repeats: Option<usize>,

    /// Batches (of 3 ids) through the unthrottled dispatcher [default: 100000;
    /// 30000 with --quick].
    #[arg(long)]
    dispatch_batches: Option<usize>,

    /// --max-in-flight of the unthrottled dispatcher.
    #[arg(long, default_value_t = 64)]
    dispatch_in_flight: usize,

    /// Nodes draining the unthrottled backlog together, each a `sluice serve`
    /// on the same database (PostgreSQL only when more than 1).
    #[arg(long, default_value_t = 1)]
    dispatch_nodes: usize,

    /// Batch starts in the rate scenario [default: 1000; 300 with --quick].
    #[arg(long)]
    rate_batches: Option<usize>,

    /// --interval of the rate scenario.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    rate_interval: Duration,

    /// The soak's paced run at a fraction of the peak [default: 10m; 1m with
    /// --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    soak_duration: Option<Duration>,

    /// The soak's closed-loop mixed run that finds the peak.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    soak_peak_duration: Duration,

    /// The soak's load as a fraction of the measured peak.
    #[arg(long, default_value_t = 0.5)]
    soak_fraction: f64,

    /// How often the soak prints a row [default: 1m; 15s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    soak_report_every: Option<Duration>,

    /// Start the soak's server with `--retention` of this (e.g. `1m`) and a
    /// pruning pass every 10 s, and judge the database size over the last 5
    /// minutes (flat within ±10%) [default: none, the server's own 7d, so the
    /// soak prunes nothing].
    #[arg(long, value_parser = humantime::parse_duration)]
    soak_retention: Option<Duration>,

    /// Do not read GET /stats (the queue depth) at each soak row, only after
    /// the load: it counts every batch, so it slows as the database grows, and
    /// on SQLite the reads that queue behind it on its reader connection wait
    /// as long.
    #[arg(long)]
    soak_skip_stats: bool,

    /// Ended batches the pruning scenario seeds and then prunes [default:
    /// 1000000; 100000 with --quick].
    #[arg(long)]
    prune_batches: Option<usize>,

    /// Measured time of each phase of the pruning scenario (without, then
    /// while pruning) [default: 10s; 5s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    prune_duration: Option<Duration>,

    /// Before each measurement, wait up to this long (e.g. `10m`) for the rest
    /// of the machine to go quiet: a build beside the benchmark takes the CPU
    /// and the disk the figures are about.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait_quiet: Option<Duration>,

    /// Worker threads of this tool's own runtime (it shares the machine with
    /// the server).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,

    /// How long each of the adaptive scenario's two runs (adaptive on, then
    /// off) lasts [default: 60s; 20s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    adaptive_duration: Option<Duration>,

    /// Claims timed at each tenant count of the claim scenario, with each
    /// fairness [default: 1000; 300 with --quick].
    #[arg(long)]
    claim_count: Option<usize>,

    /// Tenant counts of the claim scenario, comma-separated [default:
    /// 1,100,10000].
    #[arg(long, value_delimiter = ',')]
    claim_tenants: Vec<usize>,

    /// The seed-design reference server for `versus-seed`: a folder with its
    /// `server.js` and `package.json`, copied to a temporary folder (with `npm
    /// install` there when the copy has no `node_modules/`) [default:
    /// `shared/seedref` beside the repository, i.e. its `../shared/seedref`,
    /// or beside the main checkout of a git worktree].
    #[arg(long)]
    seedref: Option<PathBuf>,

    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Ingest,
    Status,
    Memory,
    Big,
    Dispatch,
    Rate,
    /// Issue 7's soak: not part of `all`, for it takes 10+ minutes.
    Soak,
    /// 64 POSTs with a 15 MiB `priority` array and 64 GET /status with 16
    /// MiB bodies at once: peak memory, and `/healthz` meanwhile.
    HostileBodies,
    /// GET /status of a 1,000,000-id request: peak memory.
    BigStatus,
    /// 1,000 connections sending headers a byte a second: others' latency.
    Slowloris,
    /// The three above.
    Hostile,
    /// Issue 11: POST /ingest p99 while 1,000,000 ended batches are pruned,
    /// against its p99 without pruning.
    Prune,
    /// Issue 12: a queue at twice an upstream's hidden limit, with adaptive
    /// rate on and off: 429 share and successes per second.
    Adaptive,
    /// Issue 13: one claim's time at 1, 100 and 10,000 tenants with work
    /// waiting, through the store (no server): SQLite, and PostgreSQL too
    /// with --database.
    Claim,
    /// Issue 14: the `ingest` and `status` loads on the seed-design reference
    /// server (node, Express, in memory), then on Sluice on SQLite, and on
    /// PostgreSQL with --database; Sluice's req/s as multiples of the seed's,
    /// all from the same run. Not part of `all`: it needs node and npm.
    VersusSeed,
    All,
}

const ORDER: [Scenario; 6] = [
    Scenario::Ingest,
    Scenario::Status,
    Scenario::Memory,
    Scenario::Big,
    Scenario::Dispatch,
    Scenario::Rate,
];

/// Scenarios that run only when named, after the others.
const ON_REQUEST: [Scenario; 8] = [
    Scenario::Soak,
    Scenario::Prune,
    Scenario::Adaptive,
    Scenario::Claim,
    Scenario::VersusSeed,
    Scenario::HostileBodies,
    Scenario::BigStatus,
    Scenario::Slowloris,
];

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen scenarios; `Ok(false)` if a scenario failed to run.
async fn run(args: Args) -> anyhow::Result<bool> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the load generator; use `cargo run --release -p sluice-bench`"
        );
    }
    // `all` is the six scenarios of issue 6; the soak runs only when named.
    let all = args.scenario.contains(&Scenario::All);
    let chosen: Vec<Scenario> = ORDER
        .iter()
        .copied()
        .filter(|s| all || args.scenario.contains(s))
        .chain(ON_REQUEST.iter().copied().filter(|s| {
            args.scenario.contains(s)
                || (args.scenario.contains(&Scenario::Hostile)
                    && !matches!(
                        s,
                        Scenario::Soak
                            | Scenario::Prune
                            | Scenario::Adaptive
                            | Scenario::Claim
                            | Scenario::VersusSeed
                    ))
        }))
        .collect();
    // The claim scenario drives the store itself.
    let needs_server = chosen.iter().any(|s| *s != Scenario::Claim);
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => default_server_binary()?,
    };
    if needs_server && !binary.is_file() {
        bail!(
            "no server binary at {}: run `cargo build --release` first (or pass --server PATH)",
            binary.display()
        );
    }
    if needs_server && args.server.is_none() {
        warn_if_stale(&binary);
    }
    let sqlite_parent = args.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    let database = match &args.database {
        None => DatabaseSpec::Sqlite {
            parent: sqlite_parent.clone(),
        },
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            DatabaseSpec::Postgres {
                url: url.clone(),
                fresh: !args.pg_reuse,
            }
        }
        Some(other) => bail!(
            "--database takes a postgres:// URL (SQLite is the default, in --tmpdir); got {other}"
        ),
    };
    let temp_logs;
    let log_dir = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp_logs = tempfile::Builder::new()
                .prefix("sluice-bench-logs-")
                .tempdir()?;
            temp_logs.path().to_path_buf()
        }
    };
    let quick = args.quick;
    let pick = |value: Option<Duration>, full: u64, short: u64| {
        value.unwrap_or(Duration::from_secs(if quick { short } else { full }))
    };
    let mut memory_ids = if args.memory_ids.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        args.memory_ids.clone()
    };
    memory_ids.sort_unstable();
    memory_ids.dedup();
    let adaptive_duration = pick(args.adaptive_duration, 60, 20);
    let claim_settings = claim::ClaimSettings {
        claims: args
            .claim_count
            .unwrap_or(if quick { 300 } else { 1_000 })
            .max(1),
        tenants: if args.claim_tenants.is_empty() {
            claim::TENANTS.to_vec()
        } else {
            args.claim_tenants.iter().map(|n| (*n).max(1)).collect()
        },
        sqlite_parent: sqlite_parent.clone(),
    };
    let seed_settings = seed::SeedSettings {
        dir: args.seedref.clone().unwrap_or_else(seed::default_dir),
        sqlite_parent,
    };
    let settings = Settings {
        connections: args.connections.max(1),
        ids_per_request: args.ids_per_request.max(1),
        warmup: args.warmup,
        duration: pick(args.duration, 20, 10),
        status_ingestions: args.status_ingestions.max(1),
        memory_ids,
        memory_chunk: args.memory_chunk.max(1),
        depth_duration: pick(args.depth_duration, 10, 5),
        big_ids: args.big_ids.max(1),
        big_repeats: args.big_repeats.unwrap_or(if quick { 1 } else { 3 }).max(1),
        dispatch_batches: args
            .dispatch_batches
            .unwrap_or(if quick { 30_000 } else { 100_000 })
            .max(1),
        dispatch_in_flight: args.dispatch_in_flight.max(1),
        dispatch_nodes: args.dispatch_nodes.max(1),
        rate_batches: args
            .rate_batches
            .unwrap_or(if quick { 300 } else { 1_000 })
            .max(2),
        rate_interval: args.rate_interval,
        soak_duration: pick(args.soak_duration, 600, 60),
        soak_peak_duration: args.soak_peak_duration,
        soak_fraction: args.soak_fraction,
        soak_report_every: pick(args.soak_report_every, 60, 15),
        soak_skip_stats: args.soak_skip_stats,
        prune_batches: args
            .prune_batches
            .unwrap_or(if quick { 100_000 } else { 1_000_000 })
            .max(1),
        prune_duration: pick(args.prune_duration, 10, 5),
        wait_quiet: args.wait_quiet,
    };

    let soak = chosen.contains(&Scenario::Soak);
    let prune = chosen.contains(&Scenario::Prune);
    let adaptive = chosen.contains(&Scenario::Adaptive);
    let claim = chosen.contains(&Scenario::Claim);
    let versus_seed = chosen.contains(&Scenario::VersusSeed);
    if soak {
        if !(settings.soak_fraction > 0.0 && settings.soak_fraction.is_finite()) {
            bail!(
                "--soak-fraction must be above 0; got {}",
                settings.soak_fraction
            );
        }
        if settings.soak_peak_duration.is_zero() || settings.soak_report_every.is_zero() {
            bail!("--soak-peak-duration and --soak-report-every must be above 0");
        }
        // The verdict compares the first window with the last.
        if settings.soak_duration < settings.soak_report_every * 2 {
            bail!(
                "--soak-duration ({}) must hold at least two --soak-report-every windows ({} each)",
                humantime::format_duration(settings.soak_duration),
                humantime::format_duration(settings.soak_report_every)
            );
        }
    }

    print_header(
        needs_server.then_some(&*binary),
        &database,
        &args,
        &settings,
    );
    let mut bench = Bench {
        binary,
        database,
        log_dir,
        rust_log: args.server_rust_log.clone(),
        settings,
        summary: Summary::default(),
    };

    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for scenario in chosen {
        let result = match scenario {
            Scenario::Ingest => bench.ingest().await,
            Scenario::Status => bench.status().await,
            Scenario::Memory => bench.memory().await,
            Scenario::Big => bench.big().await,
            Scenario::Dispatch => bench.dispatch().await,
            Scenario::Rate => bench.rate().await,
            Scenario::Soak => bench.soak(args.soak_retention).await,
            Scenario::Prune => bench.prune().await,
            Scenario::Adaptive => bench.adaptive(adaptive_duration).await,
            Scenario::Claim => bench.claim(&claim_settings).await,
            Scenario::VersusSeed => bench.versus_seed(&seed_settings).await,
            Scenario::HostileBodies => bench.hostile_bodies().await,
            Scenario::BigStatus => bench.big_status().await,
            Scenario::Slowloris => bench.slowloris().await,
            Scenario::Hostile | Scenario::All => unreachable!("expanded above"),
        };
        if let Err(error) = result {
            eprintln!("\nerror in the {scenario:?} scenario: {error:#}");
            failed.push(format!("{scenario:?}"));
        }
    }

    println!(
        "\n== Summary ({} in all; targets from issue 6{}{}{}{}{}) ==\n",
        report::secs(started.elapsed()),
        if soak {
            ", the soak's from issue 7"
        } else {
            ""
        },
        if prune {
            ", the prune's from issue 11"
        } else {
            ""
        },
        if adaptive {
            ", the adaptive rate's from issue 12"
        } else {
            ""
        },
        if versus_seed {
            ", the ratios to the seed design's from issue 14"
        } else {
            ""
        },
        if claim {
            "; the claim cost of issue 13 has none"
        } else {
            ""
        }
    );
    bench.summary.print();
    if !failed.is_empty() {
        println!("Scenarios that failed to run: {}", failed.join(", "));
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "rows": bench.summary.rows,
            "failed_scenarios": failed,
            "quick": quick,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(failed.is_empty())
}

/// `target/release/sluice` in the target folder this tool was built into.
fn default_server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this tool's own path")?;
    // <target>/<profile>/sluice-bench
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("this tool is not in a Cargo target folder; pass --server")?;
    Ok(target.join("release").join("sluice"))
}

/// Warns when a source file of the service is newer than the binary.
fn warn_if_stale(binary: &Path) {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = newest_mtime(&root.join("src"))
        .into_iter()
        .chain(newest_mtime(&root.join("Cargo.toml")))
        .chain(newest_mtime(&root.join("migrations")))
        .max();
    if let Some(newest) = newest
        && newest > built
    {
        eprintln!(
            "warning: {} is older than the service's sources; run `cargo build --release` to bench the current code",
            binary.display()
        );
    }
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| newest_mtime(&e.path()))
            .max()
    } else {
        meta.modified().ok()
    }
}

fn print_header(binary: Option<&Path>, database: &DatabaseSpec, args: &Args, settings: &Settings) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".to_string(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("sluice-bench{}", if args.quick { " --quick" } else { "" });
    println!("  machine:  {cores} cores, {model}, {memory} RAM");
    match binary {
        Some(binary) => println!("  server:   {}", binary.display()),
        None => println!("  server:   none (the claim scenario drives the store itself)"),
    }
    println!("  database: {}", database.describe());
    println!(
        "  load:     {} connections, {} thread(s) of load generator on the same machine, {} warm-up",
        settings.connections,
        args.client_threads.max(1),
        report::secs(settings.warmup)
    );
    if let Some(load) = server::load_average() {
        println!("  load average (1 min) before the run: {load:.2}");
        if load > 0.5 {
            eprintln!(
                "warning: the machine is busy (load {load:.2}); the figures will be low. Each load run reports the CPU the rest of the machine took"
            );
        }
    }
    if let DatabaseSpec::Sqlite { parent } = database
        && server::filesystem_of(parent) == "tmpfs"
    {
        eprintln!(
            "warning: {} is on tmpfs, where fsync is free: durable-write figures will flatter the service; pass --tmpdir on a disk",
            parent.display()
        );
    }
}
