//! Issue 14's yardstick: the `ingest` and `status` loads, unchanged, on the
//! seed-design reference server (`shared/seedref`: Express, everything in
//! memory) and on Sluice, in one run, so that Sluice's figures can be quoted as
//! multiples of the seed's measured on the same machine at the same time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tempfile::TempDir;

use crate::load::{LoadResult, Target, ms, thousands};
use crate::report::{print_table, secs};
use crate::scenarios::{Bench, Throughput};
use crate::server::{DatabaseSpec, SeedServer, log_tail};

/// Where the reference server is, and where Sluice's SQLite files go.
pub struct SeedSettings {
    /// The folder with the seed design's `server.js` and `package.json`.
    pub dir: PathBuf,
    /// Sluice on SQLite runs even with `--database`: its files go here.
    pub sqlite_parent: PathBuf,
}

/// Issue 14's targets for one store, as multiples of the seed's throughput and
/// absolute p99s.
struct Targets {
    post_ratio: f64,
    post_p99: Duration,
    get_ratio: f64,
    get_p99: Duration,
}

const SQLITE_TARGETS: Targets = Targets {
    post_ratio: 8.0,
    post_p99: Duration::from_millis(5),
    get_ratio: 10.0,
    get_p99: Duration::from_millis(3),
};

const POSTGRES_TARGETS: Targets = Targets {
    post_ratio: 2.0,
    post_p99: Duration::from_millis(20),
    get_ratio: 3.0,
    get_p99: Duration::from_millis(10),
};

/// One server's two runs.
struct Column {
    name: &'static str,
    ingest: LoadResult,
    status: LoadResult,
}

impl Column {
    fn run(&self, load: Throughput) -> &LoadResult {
        match load {
            Throughput::Ingest => &self.ingest,
            Throughput::Status => &self.status,
        }
    }
}

/// `shared/seedref` beside the repository this tool was built from (its
/// `../shared/seedref`); when that is missing and the repository is a git
/// worktree, the same beside its main checkout.
pub fn default_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let beside = |root: &Path| root.join("../shared/seedref");
    let here = beside(&repo);
    if here.join("server.js").is_file() {
        return here;
    }
    // A worktree's `.git` is a file: `gitdir: <main>/.git/worktrees/<name>`.
    std::fs::read_to_string(repo.join(".git"))
        .ok()
        .and_then(|text| {
            text.trim()
                .strip_prefix("gitdir:")
                .map(|dir| PathBuf::from(dir.trim()))
        })
        .and_then(|gitdir| gitdir.ancestors().nth(3).map(beside))
        .filter(|dir| dir.join("server.js").is_file())
        .unwrap_or(here)
}

impl Bench {
    /// j. The `ingest` and `status` loads on the seed-design server, then on
    /// Sluice on SQLite, then on PostgreSQL with `--database`; Sluice's
    /// figures as multiples of the seed's.
    pub async fn versus_seed(&mut self, seed: &SeedSettings) -> anyhow::Result<()> {
        println!(
            "\n== j. Versus the seed's design: POST /ingest and GET /status/{{id}}, {} connections, {} ids per request, {} each, on the seed-design server (Express, in memory) and on Sluice ==",
            self.settings.connections,
            self.settings.ids_per_request,
            secs(self.settings.duration)
        );
        let copy = prepare(&seed.dir, &self.log_dir)?;

        println!("  -- seed design ({})", seed.dir.display());
        // Each run on a server of its own, as Sluice's are, killed after it.
        let ingest = {
            let server = self.start_seed(copy.path(), "seed-ingest")?;
            self.throughput_run(&server, Throughput::Ingest).await?
        };
        let status = {
            let server = self.start_seed(copy.path(), "seed-status")?;
            self.throughput_run(&server, Throughput::Status).await?
        };
        ensure!(
            ingest.ok > 0 && status.ok > 0,
            "the seed-design server answered no request in a measured window: nothing to compare with (its logs: {}/server-seed-*.log)",
            self.log_dir.display()
        );
        let reference = Column {
            name: "seed design",
            ingest,
            status,
        };

        let mut stores = vec![(
            "Sluice SQLite",
            "sqlite",
            DatabaseSpec::Sqlite {
                parent: seed.sqlite_parent.clone(),
            },
            SQLITE_TARGETS,
        )];
        if let DatabaseSpec::Postgres { .. } = &self.database {
            stores.push((
                "Sluice PostgreSQL",
                "pg",
                self.database.clone(),
                POSTGRES_TARGETS,
            ));
        }
        let mut sluice = Vec::new();
        for (name, short, spec, targets) in stores {
            println!("  -- {name}");
            let ingest = self
                .fresh_throughput_run(
                    &spec,
                    &format!("versus-seed-{short}-ingest"),
                    Throughput::Ingest,
                )
                .await?;
            let status = self
                .fresh_throughput_run(
                    &spec,
                    &format!("versus-seed-{short}-status"),
                    Throughput::Status,
                )
                .await?;
            sluice.push((
                Column {
                    name,
                    ingest,
                    status,
                },
                targets,
            ));
        }

        println!();
        print_comparison(&reference, &sluice);
        for (column, targets) in &sluice {
            self.add_versus_rows(&reference, column, targets);
        }
        Ok(())
    }

    fn start_seed(&self, dir: &Path, label: &str) -> anyhow::Result<SeedServer> {
        let server = SeedServer::start(dir, &self.log_dir, label)?;
        println!(
            "  seed-design server pid {} on {} (node server.js, its defaults)",
            server.pid(),
            server.addr()
        );
        Ok(server)
    }

    fn add_versus_rows(&mut self, reference: &Column, column: &Column, targets: &Targets) {
        let store = column.name.trim_start_matches("Sluice ");
        for (route, seed, run, ratio_target, p99_target) in [
            (
                "POST /ingest",
                &reference.ingest,
                &column.ingest,
                targets.post_ratio,
                targets.post_p99,
            ),
            (
                "GET /status",
                &reference.status,
                &column.status,
                targets.get_ratio,
                targets.get_p99,
            ),
        ] {
            let ratio = run.per_second() / seed.per_second();
            self.summary.add(
                format!("{store} {route} vs the seed design"),
                format!(
                    "{ratio:.1}× ({} vs {} req/s)",
                    thousands(run.per_second() as u64),
                    thousands(seed.per_second() as u64)
                ),
                format!("≥ {ratio_target}× the seed"),
                Some(ratio >= ratio_target && run.errors == 0),
            );
            self.summary.add(
                format!("{store} {route} p99 (beside the seed's)"),
                format!("{} (seed {})", ms(run.p(0.99)), ms(seed.p(0.99))),
                format!("≤ {}", ms(p99_target)),
                Some(run.p(0.99) <= p99_target),
            );
        }
    }
}

/// The table: per route, each server's req/s and p99, Sluice's as multiples
/// of the seed's; then the CPU of each run.
fn print_comparison(reference: &Column, sluice: &[(Column, Targets)]) {
    let mut headers = vec!["figure", reference.name];
    headers.extend(sluice.iter().map(|(c, _)| c.name));
    if sluice.len() < 2 {
        headers.push("Sluice PostgreSQL");
    }
    let not_run = || (sluice.len() < 2).then(|| "not run (no --database)".to_string());
    let mut rows = Vec::new();
    for (figure, load) in [
        ("POST /ingest", Throughput::Ingest),
        ("GET /status/{id}", Throughput::Status),
    ] {
        let seed = reference.run(load);
        let mut row = vec![
            figure.to_string(),
            format!(
                "{} req/s, p99 {}",
                thousands(seed.per_second() as u64),
                ms(seed.p(0.99))
            ),
        ];
        row.extend(sluice.iter().map(|(c, _)| {
            let run = c.run(load);
            format!(
                "{:.1}× ({} req/s), p99 {}",
                run.per_second() / seed.per_second(),
                thousands(run.per_second() as u64),
                ms(run.p(0.99))
            )
        }));
        row.extend(not_run());
        rows.push(row);
    }
    let columns: Vec<&Column> = std::iter::once(reference)
        .chain(sluice.iter().map(|(c, _)| c))
        .collect();
    type Cell = fn(&LoadResult) -> String;
    let per_run: [(&str, Cell); 3] = [
        ("server CPU, POST / GET", |r| {
            format!("{:.2}", r.server_cpu.as_secs_f64() / r.window.as_secs_f64())
        }),
        ("rest of the machine, POST / GET", |r| {
            format!("{:.2}", r.other_cores())
        }),
        ("errors, POST / GET", |r| r.errors.to_string()),
    ];
    for (figure, cell) in per_run {
        let mut row = vec![figure.to_string()];
        row.extend(
            columns
                .iter()
                .map(|c| format!("{} / {}", cell(&c.ingest), cell(&c.status))),
        );
        row.extend(not_run());
        rows.push(row);
    }
    print_table(&headers, &rows);
    println!(
        "  (CPU in cores of {}; Sluice's ratios are to the seed design measured in this run. With PostgreSQL, \"rest of the machine\" includes the PostgreSQL server's own CPU.)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // PostgreSQL's own CPU is "the rest of the machine" in its runs.
    let busiest = columns
        .iter()
        .filter(|c| !c.name.ends_with("PostgreSQL"))
        .flat_map(|c| [c.ingest.other_cores(), c.status.other_cores()])
        .fold(0.0, f64::max);
    if busiest > 0.25 {
        println!(
            "  warning: other work on the machine took up to {busiest:.2} cores during these runs; the ratios are unreliable (run again on a quiet machine, or with --wait-quiet)"
        );
    }
}

/// Copies the reference server to a temporary folder (shared/ may be
/// read-only) and runs `npm install` there unless the copy has `node_modules/`.
fn prepare(source: &Path, log_dir: &Path) -> anyhow::Result<TempDir> {
    ensure!(
        source.join("server.js").is_file() && source.join("package.json").is_file(),
        "no seed-design reference server (server.js, package.json) at {}: pass --seedref DIR, the folder `shared/seedref` beside the repository (see its README.md)",
        source.display()
    );
    let copy = tempfile::Builder::new()
        .prefix("sluice-bench-seedref-")
        .tempdir()
        .context("creating a folder for the seed-design server")?;
    copy_dir(source, copy.path())
        .with_context(|| format!("copying {} to {}", source.display(), copy.path().display()))?;
    if !copy.path().join("node_modules").is_dir() {
        let log = log_dir.join("seedref-npm-install.log");
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(copy.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("running `npm install` for the seed-design server (is npm installed?)")?;
        ensure!(
            status.success(),
            "`npm install` in {} failed ({status}); its output:\n{}",
            copy.path().display(),
            log_tail(&log)
        );
        println!(
            "  npm install for the seed-design server: {} (log {})",
            secs(started.elapsed()),
            log.display()
        );
    }
    Ok(copy)
}

/// Copies a folder's files, folders and symbolic links; the copies are
/// writable by their owner, whatever the originals were.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            copy_dir(&source, &target)?;
        } else {
            std::fs::copy(&source, &target)?;
            let mut permissions = std::fs::metadata(&target)?.permissions();
            permissions.set_mode(permissions.mode() | 0o200);
            std::fs::set_permissions(&target, permissions)?;
        }
    }
    Ok(())
}
