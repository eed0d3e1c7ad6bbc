//! The six scenarios of issue 6. Each starts its own server(s) on a database of
//! its own, prints its figures, and adds its rows to the summary. The soak of
//! issue 7 is a scenario too, in `soak.rs`, with the helpers here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;

use crate::http::{BatchStatus, Connection, Status, with_deadline};
use crate::load::{self, LoadResult, LoadSpec, Rng, Target, Workload, ms, thousands};
use crate::report::{Summary, mib, micros_ms, percentile, secs};
use crate::server::{Database, DatabaseSpec, Server, ServerConfig, cpu_time_of, machine_busy_time};

/// Everything the scenarios share.
pub struct Bench {
    pub binary: PathBuf,
    pub database: DatabaseSpec,
    pub log_dir: PathBuf,
    pub rust_log: Option<String>,
    pub settings: Settings,
    pub summary: Summary,
}

/// The sizes of the run, after `--quick` and the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connections: usize,
    pub ids_per_request: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub status_ingestions: usize,
    pub memory_ids: Vec<u64>,
    pub memory_chunk: usize,
    pub depth_duration: Duration,
    pub big_ids: usize,
    pub big_repeats: usize,
    pub dispatch_batches: usize,
    pub dispatch_in_flight: usize,
    pub dispatch_nodes: usize,
    pub rate_batches: usize,
    pub rate_interval: Duration,
    /// The soak's paced run, after its peak has been measured.
    pub soak_duration: Duration,
    /// The soak's closed-loop run that finds the peak.
    pub soak_peak_duration: Duration,
    /// The soak's load, as a fraction of the peak.
    pub soak_fraction: f64,
    /// How often the soak prints a row of figures.
    pub soak_report_every: Duration,
    /// Leave `GET /stats` out of the soak's rows (it disturbs the reads).
    pub soak_skip_stats: bool,
    /// Ended batches seeded for the pruning scenario.
    pub prune_batches: usize,
    /// Measured time of each of the pruning scenario's two phases.
    pub prune_duration: Duration,
    /// Before each measurement, wait up to this long for the rest of the
    /// machine to go quiet.
    pub wait_quiet: Option<Duration>,
}

/// CPU the rest of the machine may use for it to count as quiet, in cores.
const QUIET_CORES: f64 = 0.15;

/// Ids per batch in every scenario (the service's default).
pub(crate) const BATCH_SIZE: usize = 3;

/// The two throughput loads of the `ingest` and `status` scenarios.
#[derive(Clone, Copy)]
pub(crate) enum Throughput {
    /// `POST /ingest` of `--ids-per-request` ids, random priority.
    Ingest,
    /// `GET /status/{id}` of `--status-ingestions` requests created first.
    Status,
}
const TARGET_POST_RPS: f64 = 40_000.0;
const TARGET_POST_P99: Duration = Duration::from_millis(5);
const TARGET_GET_RPS: f64 = 60_000.0;
const TARGET_GET_P99: Duration = Duration::from_millis(3);
const TARGET_RSS: u64 = 64 * 1024 * 1024;
const TARGET_RSS_DEPTH: u64 = 10_000_000;
const TARGET_DEPTH_RATIO: f64 = 0.8;
const TARGET_BIG: Duration = Duration::from_secs(2);
const TARGET_DISPATCH: f64 = 40_000.0;
const TARGET_RATE_P99_MICROS: i64 = 2_000;

impl Bench {
    pub(crate) fn start_server(
        &self,
        db: &Database,
        label: &str,
        args: &[&str],
    ) -> anyhow::Result<Server> {
        let mut all = vec!["--batch-size".to_string(), BATCH_SIZE.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let config = ServerConfig {
            binary: &self.binary,
            args: all,
            rust_log: self.rust_log.as_deref(),
            log_dir: &self.log_dir,
        };
        let server = Server::start(&config, db, label)?;
        println!(
            "  server pid {} on {} ({})",
            server.pid(),
            server.addr(),
            args.join(" ")
        );
        Ok(server)
    }

    /// With `--wait-quiet`, waits until the rest of the machine has used less
    /// than `QUIET_CORES` for a second (a build beside the benchmark would
    /// take the CPU and the disk that the figures are about).
    pub(crate) async fn settle(&self) {
        let Some(limit) = self.settings.wait_quiet else {
            return;
        };
        let deadline = Instant::now() + limit;
        let mut told = false;
        loop {
            let (machine0, own0) = (machine_busy_time(), cpu_time_of("self"));
            tokio::time::sleep(Duration::from_secs(1)).await;
            let own = cpu_time_of("self").saturating_sub(own0);
            let busy = machine_busy_time()
                .saturating_sub(machine0)
                .saturating_sub(own)
                .as_secs_f64();
            if busy <= QUIET_CORES {
                if told {
                    println!("  (quiet now)");
                }
                return;
            }
            if Instant::now() > deadline {
                println!("  (the machine is still busy, {busy:.2} cores; going on)");
                return;
            }
            if !told {
                println!("  waiting for the machine to go quiet ({busy:.2} cores busy)...");
                told = true;
            }
        }
    }

    pub(crate) async fn measure(
        &self,
        server: &impl Target,
        workload: Workload,
        duration: Duration,
    ) -> anyhow::Result<LoadResult> {
        self.settle().await;
        load::run(server, workload, &self.load_spec(duration)).await
    }

    fn load_spec(&self, duration: Duration) -> LoadSpec {
        LoadSpec {
            connections: self.settings.connections,
            warmup: self.settings.warmup,
            duration,
        }
    }

    pub(crate) fn ingest_workload(&self, seed: u64) -> Workload {
        Workload::Ingest(self.ingest_bodies(seed))
    }

    /// The bodies that `POST /ingest` under load cycles through.
    pub(crate) fn ingest_bodies(&self, seed: u64) -> Arc<Vec<Bytes>> {
        load::ingest_bodies(seed, 4096, self.settings.ids_per_request)
    }

    /// Creates the ingestions that `GET /status` reads; their load.
    pub(crate) async fn status_targets(&self, server: &impl Target) -> anyhow::Result<Workload> {
        Ok(Workload::Get(self.status_paths(server).await?))
    }

    /// Creates the ingestions that `GET /status` reads; their paths.
    pub(crate) async fn status_paths(
        &self,
        server: &impl Target,
    ) -> anyhow::Result<Arc<Vec<String>>> {
        let count = self.settings.status_ingestions;
        let started = Instant::now();
        let ids = load::create_ingestions(server.addr(), count, self.settings.ids_per_request, 16)
            .await
            .context("creating the ingestions to read")?;
        println!(
            "  created {} ingestions of {} ids to read, in {}",
            thousands(count as u64),
            self.settings.ids_per_request,
            secs(started.elapsed())
        );
        Ok(Arc::new(
            ids.into_iter().map(|id| format!("/status/{id}")).collect(),
        ))
    }

    /// a. `POST /ingest` under load.
    pub async fn ingest(&mut self) -> anyhow::Result<()> {
        println!(
            "\n== a. POST /ingest: {} connections, {} ids per request, random priority ==",
            self.settings.connections, self.settings.ids_per_request
        );
        let result = self
            .fresh_throughput_run(&self.database, "ingest", Throughput::Ingest)
            .await?;
        self.add_throughput_rows("POST /ingest", &result, TARGET_POST_RPS, TARGET_POST_P99);
        Ok(())
    }

    /// b. `GET /status/{id}` under load.
    pub async fn status(&mut self) -> anyhow::Result<()> {
        println!(
            "\n== b. GET /status/{{id}}: {} connections ==",
            self.settings.connections
        );
        let result = self
            .fresh_throughput_run(&self.database, "status", Throughput::Status)
            .await?;
        self.add_throughput_rows("GET /status", &result, TARGET_GET_RPS, TARGET_GET_P99);
        Ok(())
    }

    /// `load` closed loop on `server` for `--duration` (for `Status`, its
    /// `--status-ingestions` created first); printed, and returned.
    pub(crate) async fn throughput_run(
        &self,
        server: &impl Target,
        load: Throughput,
    ) -> anyhow::Result<LoadResult> {
        let workload = match load {
            Throughput::Ingest => self.ingest_workload(1),
            Throughput::Status => self.status_targets(server).await?,
        };
        let result = self
            .measure(server, workload, self.settings.duration)
            .await?;
        result.print();
        Ok(result)
    }

    /// The `ingest` or `status` scenario's run, on a fresh server
    /// (`--interval 1h`) on a fresh database of `spec`.
    pub(crate) async fn fresh_throughput_run(
        &self,
        spec: &DatabaseSpec,
        label: &str,
        load: Throughput,
    ) -> anyhow::Result<LoadResult> {
        let db = spec.create(label)?;
        let server = self.start_server(&db, label, &["--interval", "1h"])?;
        let result = self.throughput_run(&server, load).await?;
        server.stop()?;
        Ok(result)
    }

    fn add_throughput_rows(
        &mut self,
        name: &str,
        result: &LoadResult,
        target_rps: f64,
        target_p99: Duration,
    ) {
        let rps = result.per_second();
        self.summary.add(
            format!("{name} throughput"),
            format!("{} req/s", thousands(rps as u64)),
            format!("≥ {} req/s", thousands(target_rps as u64)),
            Some(rps >= target_rps && result.errors == 0),
        );
        self.summary.add(
            format!("{name} p99 latency"),
            format!(
                "{} (p50 {}, max {})",
                ms(result.p(0.99)),
                ms(result.p(0.5)),
                ms(result.max())
            ),
            format!("≤ {}", ms(target_p99)),
            Some(result.p(0.99) <= target_p99),
        );
    }

    /// Status then ingest, shorter, at whatever depth the server holds.
    async fn short_pair(&self, server: &Server) -> anyhow::Result<(LoadResult, LoadResult)> {
        let workload = self.status_targets(server).await?;
        let duration = self.settings.depth_duration;
        let status = self.measure(server, workload, duration).await?;
        status.print();
        let ingest = self
            .measure(server, self.ingest_workload(2), duration)
            .await?;
        ingest.print();
        Ok((ingest, status))
    }

    /// c. Resident memory with a deep queue, and speed at that depth.
    pub async fn memory(&mut self) -> anyhow::Result<()> {
        let depths = self.settings.memory_ids.clone();
        let deepest = *depths.last().context("no --memory-ids")?;
        println!(
            "\n== c. Memory: RSS with {} ids queued; speeds at {} ids vs an empty queue ==",
            depths
                .iter()
                .map(|d| thousands(*d))
                .collect::<Vec<_>>()
                .join(" then "),
            thousands(deepest)
        );

        println!(
            "  -- empty queue ({} each)",
            secs(self.settings.depth_duration)
        );
        let db = self.database.create("memory-empty")?;
        let server = self.start_server(&db, "memory-empty", &["--interval", "1h"])?;
        let (empty_ingest, empty_status) = self.short_pair(&server).await?;
        server.stop()?;
        drop(db);

        let db = self.database.create("memory")?;
        let mut server = self.start_server(
            &db,
            "memory",
            &["--interval", "1h", "--mock-latency", "0ms"],
        )?;
        let idle = server.memory()?;
        println!(
            "  idle, empty queue: RSS {} (peak {})",
            mib(idle.rss),
            mib(idle.peak)
        );
        self.summary
            .add("RSS, idle and empty", mib(idle.rss), "", None);
        let chunk = self.settings.memory_chunk;
        let mut queued: u64 = 0;
        let mut rng = Rng::new(77);
        // A handful of bodies, reused: the ids' values do not matter here.
        let bodies: Vec<Bytes> = (0..4)
            .map(|_| load::ingest_body(&mut rng, chunk, Some("MEDIUM")))
            .collect();
        for &depth in &depths {
            let started = Instant::now();
            let requests = (depth.saturating_sub(queued)).div_ceil(chunk as u64) as usize;
            queue_bodies(&server, &bodies, requests, 4).await?;
            queued += (requests * chunk) as u64;
            let took = started.elapsed();
            server.check_alive()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let memory = server.memory()?;
            println!(
                "  {} ids queued ({} requests of {} ids in {}, {} ids/s): RSS {} (peak {})",
                thousands(queued),
                requests,
                thousands(chunk as u64),
                secs(took),
                thousands(((requests * chunk) as f64 / took.as_secs_f64().max(1e-6)) as u64),
                mib(memory.rss),
                mib(memory.peak)
            );
            let at_target = queued >= TARGET_RSS_DEPTH;
            self.summary.add(
                format!("RSS, {} ids queued", thousands(queued)),
                format!("{} (peak {})", mib(memory.rss), mib(memory.peak)),
                if at_target {
                    format!("≤ {} at 10,000,000", mib(TARGET_RSS))
                } else {
                    String::new()
                },
                at_target.then_some(memory.rss <= TARGET_RSS),
            );
        }

        println!(
            "  -- at {} ids queued ({} each)",
            thousands(queued),
            secs(self.settings.depth_duration)
        );
        let (deep_ingest, deep_status) = self.short_pair(&server).await?;
        let after = server.memory()?;
        println!(
            "  after the load at depth: RSS {} (peak {})",
            mib(after.rss),
            mib(after.peak)
        );
        server.stop()?;
        let depth_label = thousands(queued);
        for (name, empty, deep) in [
            ("POST /ingest", &empty_ingest, &deep_ingest),
            ("GET /status", &empty_status, &deep_status),
        ] {
            let ratio = deep.per_second() / empty.per_second();
            println!(
                "  {name}: {} req/s at depth vs {} empty = {:.0}%; p99 {} vs {}",
                thousands(deep.per_second() as u64),
                thousands(empty.per_second() as u64),
                ratio * 100.0,
                ms(deep.p(0.99)),
                ms(empty.p(0.99))
            );
            self.summary.add(
                format!("{name} at {depth_label} ids vs empty"),
                format!(
                    "{:.0}% ({} vs {} req/s; p99 {} vs {})",
                    ratio * 100.0,
                    thousands(deep.per_second() as u64),
                    thousands(empty.per_second() as u64),
                    ms(deep.p(0.99)),
                    ms(empty.p(0.99))
                ),
                "≥ 80%",
                Some(ratio >= TARGET_DEPTH_RATIO),
            );
        }
        Ok(())
    }

    /// d. One request of many ids: time to the 200.
    pub async fn big(&mut self) -> anyhow::Result<()> {
        let n = self.settings.big_ids;
        println!("\n== d. One POST /ingest of {} ids ==", thousands(n as u64));
        let db = self.database.create("big")?;
        let server = self.start_server(&db, "big", &["--interval", "1h"])?;
        let body = load::ingest_body(&mut Rng::new(5), n, Some("MEDIUM"));
        println!("  body: {}", mib(body.len() as u64));
        let mut times = Vec::new();
        for run in 1..=self.settings.big_repeats {
            self.settle().await;
            let mut conn = Connection::open(server.addr()).await?;
            let cpu0 = server.cpu_time();
            let started = Instant::now();
            with_deadline(
                "the big POST",
                Duration::from_secs(600),
                conn.ingest(body.clone()),
            )
            .await?;
            let took = started.elapsed();
            let cpu = server.cpu_time().saturating_sub(cpu0);
            println!(
                "  run {run}: 200 after {} (server CPU {}, {} ids already queued)",
                secs(took),
                secs(cpu),
                thousands(((run - 1) * n) as u64)
            );
            times.push(took);
        }
        server.stop()?;
        times.sort();
        let median = times[times.len() / 2];
        let max = *times.last().expect("at least one run");
        self.summary.add(
            format!("one request of {} ids", thousands(n as u64)),
            if times.len() > 1 {
                format!(
                    "{} (median of {}, max {})",
                    secs(median),
                    times.len(),
                    secs(max)
                )
            } else {
                secs(median)
            },
            if n == 1_000_000 {
                "≤ 2 s"
            } else {
                "≤ 2 s at 1,000,000 ids"
            },
            (n == 1_000_000).then_some(median <= TARGET_BIG),
        );
        Ok(())
    }

    /// e. The dispatcher, unthrottled, through a backlog.
    pub async fn dispatch(&mut self) -> anyhow::Result<()> {
        let batches = self.settings.dispatch_batches;
        let in_flight = self.settings.dispatch_in_flight.to_string();
        let nodes = self.settings.dispatch_nodes;
        println!(
            "\n== e. Unthrottled dispatch: {} batches of {BATCH_SIZE}, --interval 0 --mock-latency 0ms --max-in-flight {in_flight}, {nodes} node(s) ==",
            thousands(batches as u64)
        );
        let db = self.database.create("dispatch")?;
        ensure!(
            nodes == 1 || db.url().starts_with("postgres"),
            "several nodes share a PostgreSQL database only"
        );
        // Queue the backlog with the dispatcher held back, then restart the
        // service unthrottled on the same database: the figure is the
        // dispatcher's alone, not shared with ingestion.
        let server = self.start_server(
            &db,
            "dispatch-fill",
            &["--interval", "1h", "--mock-latency", "0ms"],
        )?;
        let started = Instant::now();
        let mut requests = Vec::new();
        let per_request = 33_333 * BATCH_SIZE;
        let mut left = batches * BATCH_SIZE;
        let mut rng = Rng::new(11);
        let mut conn = Connection::open(server.addr()).await?;
        while left > 0 {
            let n = left.min(per_request);
            let body = load::ingest_body(&mut rng, n, Some("MEDIUM"));
            requests.push(conn.ingest(body).await?);
            left -= n;
        }
        // Last in the queue: LOW comes after every MEDIUM batch.
        let sentinel = conn
            .ingest(load::ingest_body(&mut rng, 1, Some("LOW")))
            .await?;
        requests.push(sentinel.clone());
        println!(
            "  queued {} ids in {} requests in {}",
            thousands((batches * BATCH_SIZE + 1) as u64),
            requests.len(),
            secs(started.elapsed())
        );
        server.stop()?;

        self.settle().await;
        let restart = SystemTime::now();
        let mut servers = Vec::new();
        for node in 0..nodes {
            servers.push(self.start_server(
                &db,
                &format!("dispatch-{node}"),
                &[
                    "--interval",
                    "0",
                    "--mock-latency",
                    "0ms",
                    "--max-in-flight",
                    &in_flight,
                ],
            )?);
        }
        let cpu_of = |servers: &[Server]| servers.iter().map(Server::cpu_time).sum::<Duration>();
        let (cpu0, machine0) = (cpu_of(&servers), machine_busy_time());
        let ready = Instant::now();
        let deadline =
            ready + Duration::from_secs(300).max(Duration::from_millis(5 * batches as u64));
        let mut conn = Connection::open(servers[0].addr()).await?;
        loop {
            let status = conn.status(&sentinel).await?;
            if status.status == "completed" {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the backlog was not processed within {:?}",
                    deadline - ready
                );
            }
            for server in &mut servers {
                server.check_alive()?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wall = ready.elapsed();
        let cpu = cpu_of(&servers).saturating_sub(cpu0);
        let machine = machine_busy_time().saturating_sub(machine0);
        let mut all = Vec::new();
        for id in &requests {
            let status = conn.status(id).await?;
            ensure!(
                status.status == "completed",
                "request {id} is {} after the last one completed",
                status.status
            );
            all.extend(status.batches);
        }
        for server in servers {
            server.stop()?;
        }

        let restart_micros = micros_since_epoch(restart);
        let mut starts = Vec::new();
        let mut completions = Vec::new();
        let mut processing = Vec::new();
        for batch in &all {
            let started = timestamp(&batch.started_at, "started_at")?;
            let completed = timestamp(&batch.completed_at, "completed_at")?;
            if started >= restart_micros {
                starts.push(started);
                completions.push(completed);
                processing.push(completed - started);
            }
        }
        ensure!(!starts.is_empty(), "no batch started after the restart");
        let first = *starts.iter().min().expect("not empty");
        let last = *completions.iter().max().expect("not empty");
        let span = Duration::from_micros((last - first).max(1) as u64);
        let rate = starts.len() as f64 / span.as_secs_f64();
        processing.sort_unstable();
        println!(
            "  {} batches from the first start to the last completion in {}: {} batches/s",
            thousands(starts.len() as u64),
            secs(span),
            thousands(rate as u64)
        );
        println!(
            "  per batch, start to completion: p50 {}  p90 {}  p99 {}  max {}",
            micros_ms(percentile(&processing, 0.5)),
            micros_ms(percentile(&processing, 0.9)),
            micros_ms(percentile(&processing, 0.99)),
            micros_ms(*processing.last().expect("not empty"))
        );
        println!(
            "  server CPU {:.2} cores, whole machine {:.2} cores, over {} (ready to last completion seen)",
            cpu.as_secs_f64() / wall.as_secs_f64(),
            machine.as_secs_f64() / wall.as_secs_f64(),
            secs(wall)
        );
        self.summary.add(
            if nodes == 1 {
                "unthrottled dispatch".to_string()
            } else {
                format!("unthrottled dispatch, {nodes} nodes")
            },
            format!("{} batches/s", thousands(rate as u64)),
            format!("≥ {} batches/s", thousands(TARGET_DISPATCH as u64)),
            Some(rate >= TARGET_DISPATCH),
        );
        Ok(())
    }

    /// f. Rate exactness with a backlog.
    pub async fn rate(&mut self) -> anyhow::Result<()> {
        let batches = self.settings.rate_batches;
        let interval = self.settings.rate_interval;
        let interval_arg = humantime::format_duration(interval).to_string();
        println!(
            "\n== f. Rate exactness: {} batches at --interval {interval_arg} (about {}) ==",
            thousands(batches as u64),
            secs(interval * batches as u32)
        );
        let db = self.database.create("rate")?;
        let mut server = self.start_server(
            &db,
            "rate",
            &["--interval", &interval_arg, "--mock-latency", "0ms"],
        )?;
        let mut conn = Connection::open(server.addr()).await?;
        let body = load::ingest_body(&mut Rng::new(13), batches * BATCH_SIZE, Some("MEDIUM"));
        self.settle().await;
        let (machine0, started) = (machine_busy_time(), Instant::now());
        let id = conn.ingest(body).await?;
        let expected = interval * batches as u32;
        let deadline = Instant::now() + expected * 3 / 2 + Duration::from_secs(60);
        let mut last_note = Instant::now();
        let status = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let status = conn.status(&id).await?;
            if status.status == "completed" {
                break status;
            }
            if Instant::now() > deadline {
                bail!("the rate run did not complete in time");
            }
            server.check_alive()?;
            if last_note.elapsed() >= Duration::from_secs(15) {
                let done = status
                    .batches
                    .iter()
                    .filter(|b| b.status == "completed")
                    .count();
                println!("  ... {done} of {batches} batches completed");
                last_note = Instant::now();
            }
        };
        let machine = machine_busy_time().saturating_sub(machine0);
        server.stop()?;
        let figures = RateFigures::from_status(&status, interval)?;
        figures.print();
        println!(
            "  whole machine {:.2} cores during the run (a busy machine wakes the dispatcher late)",
            machine.as_secs_f64() / started.elapsed().as_secs_f64()
        );
        self.summary.add(
            format!(
                "rate: p99 |start − ideal| ({} starts)",
                thousands(batches as u64)
            ),
            format!(
                "{} (p50 {}, max {})",
                micros_ms(figures.p99),
                micros_ms(figures.p50),
                micros_ms(figures.max)
            ),
            "≤ 2 ms",
            Some(figures.p99 <= TARGET_RATE_P99_MICROS),
        );
        self.summary.add(
            "rate: early starts",
            figures.early.to_string(),
            "0",
            Some(figures.early == 0),
        );
        self.summary.add(
            "rate: drift (last start − its ideal)",
            micros_ms(figures.drift),
            "none (within ±2 ms)",
            Some(figures.drift.abs() <= TARGET_RATE_P99_MICROS),
        );
        self.summary.add(
            "rate: p99 |start − scheduled_at|",
            format!(
                "{} (max {})",
                micros_ms(figures.sched_p99),
                micros_ms(figures.sched_max)
            ),
            "",
            None,
        );
        Ok(())
    }
}

/// Sends `count` requests, cycling through `bodies`, over `connections`
/// connections at once.
pub(crate) async fn queue_bodies(
    server: &Server,
    bodies: &[Bytes],
    count: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let bodies = Arc::new(bodies.to_vec());
    for c in 0..connections {
        let addr = server.addr();
        let bodies = Arc::clone(&bodies);
        let share = count / connections + usize::from(c < count % connections);
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            for i in 0..share {
                let body = bodies[(c + i) % bodies.len()].clone();
                with_deadline("queueing", Duration::from_secs(600), conn.ingest(body)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

struct RateFigures {
    starts: usize,
    p50: i64,
    p99: i64,
    max: i64,
    early: usize,
    drift: i64,
    mean_gap: f64,
    sched_p50: i64,
    sched_p99: i64,
    sched_max: i64,
    before_scheduled: usize,
    off_grid: usize,
    /// Start to completion, per batch: p50, p99, max.
    processing: (i64, i64, i64),
    /// Slots further than one interval from the previous slot: how many, and
    /// the largest (its batch index, the extra gap, and how long the batch
    /// before it took to process).
    reanchored: usize,
    largest_reanchor: Option<(usize, i64, i64)>,
}

impl RateFigures {
    fn from_status(status: &Status, interval: Duration) -> anyhow::Result<Self> {
        let step = interval.as_micros() as i64;
        let mut triples: Vec<(i64, i64, i64)> = status
            .batches
            .iter()
            .map(|b: &BatchStatus| {
                Ok((
                    timestamp(&b.started_at, "started_at")?,
                    timestamp(&b.scheduled_at, "scheduled_at")?,
                    timestamp(&b.completed_at, "completed_at")?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        ensure!(triples.len() >= 2, "too few batches to measure a rate");
        triples.sort_unstable();
        let mut processing: Vec<i64> = triples.iter().map(|t| t.2 - t.0).collect();
        processing.sort_unstable();
        let mut reanchored = 0;
        let mut largest_reanchor: Option<(usize, i64, i64)> = None;
        for k in 1..triples.len() {
            let extra = triples[k].1 - triples[k - 1].1 - step;
            if extra > 0 {
                reanchored += 1;
                let before = triples[k - 1].2 - triples[k - 1].0;
                if largest_reanchor.is_none_or(|(_, e, _)| extra > e) {
                    largest_reanchor = Some((k, extra, before));
                }
            }
        }
        let pairs: Vec<(i64, i64)> = triples.iter().map(|t| (t.0, t.1)).collect();
        let first = pairs[0].0;
        let first_scheduled = pairs[0].1;
        let mut deviation = Vec::with_capacity(pairs.len());
        let mut early = 0;
        let mut before_scheduled = 0;
        let mut off_grid = 0;
        let mut sched = Vec::with_capacity(pairs.len());
        for (k, &(started, scheduled)) in pairs.iter().enumerate() {
            let ideal = first + k as i64 * step;
            let dev = started - ideal;
            if dev < 0 {
                early += 1;
            }
            if started < scheduled {
                before_scheduled += 1;
            }
            if scheduled != first_scheduled + k as i64 * step {
                off_grid += 1;
            }
            deviation.push(dev.abs());
            sched.push((started - scheduled).abs());
        }
        let drift = pairs.last().expect("not empty").0 - (first + (pairs.len() as i64 - 1) * step);
        let mean_gap =
            (pairs.last().expect("not empty").0 - first) as f64 / (pairs.len() - 1) as f64;
        deviation.sort_unstable();
        sched.sort_unstable();
        Ok(Self {
            starts: pairs.len(),
            p50: percentile(&deviation, 0.5),
            p99: percentile(&deviation, 0.99),
            max: *deviation.last().expect("not empty"),
            early,
            drift,
            mean_gap,
            sched_p50: percentile(&sched, 0.5),
            sched_p99: percentile(&sched, 0.99),
            sched_max: *sched.last().expect("not empty"),
            before_scheduled,
            off_grid,
            processing: (
                percentile(&processing, 0.5),
                percentile(&processing, 0.99),
                *processing.last().expect("not empty"),
            ),
            reanchored,
            largest_reanchor,
        })
    }

    fn print(&self) {
        println!(
            "  {} starts; |started_at − ideal| (ideal = first start + k × interval): p50 {}  p99 {}  max {}",
            self.starts,
            micros_ms(self.p50),
            micros_ms(self.p99),
            micros_ms(self.max)
        );
        println!(
            "  early starts: {}; drift (last start − its ideal): {}; mean start-to-start gap {:.3} ms",
            self.early,
            micros_ms(self.drift),
            self.mean_gap / 1e3
        );
        println!(
            "  |started_at − scheduled_at|: p50 {}  p99 {}  max {}; started before scheduled_at: {}; scheduled_at off its grid (first scheduled_at + k × interval): {}",
            micros_ms(self.sched_p50),
            micros_ms(self.sched_p99),
            micros_ms(self.sched_max),
            self.before_scheduled,
            self.off_grid
        );
        println!(
            "  per batch, start to completion: p50 {}  p99 {}  max {}",
            micros_ms(self.processing.0),
            micros_ms(self.processing.1),
            micros_ms(self.processing.2)
        );
        match self.largest_reanchor {
            None => println!("  every scheduled_at is one interval after the previous one"),
            Some((k, extra, before)) => println!(
                "  scheduled_at more than one interval after the previous one: {} times; the largest, batch {k}, {} late, after a batch that took {} to complete",
                self.reanchored,
                micros_ms(extra),
                micros_ms(before)
            ),
        }
    }
}

fn micros_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

/// An RFC 3339 timestamp of a status answer, in microseconds since 1970.
fn timestamp(value: &Option<String>, field: &str) -> anyhow::Result<i64> {
    let text = value
        .as_deref()
        .with_context(|| format!("a batch has no {field}"))?;
    let time = humantime::parse_rfc3339(text).with_context(|| format!("{field} {text:?}"))?;
    Ok(micros_since_epoch(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_to_the_microsecond() {
        let a = timestamp(&Some("2026-11-28T15:06:19.489600Z".into()), "t").unwrap();
        let b = timestamp(&Some("2026-11-28T15:06:19.489713Z".into()), "t").unwrap();
        assert_eq!(b - a, 113);
    }

    #[test]
    fn rate_figures_find_early_starts_and_drift() {
        let batch = |started: &str, scheduled: &str| BatchStatus {
            status: "completed".into(),
            scheduled_at: Some(scheduled.into()),
            started_at: Some(started.into()),
            completed_at: Some(started.into()),
        };
        let status = Status {
            status: "completed".into(),
            batches: vec![
                batch("2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z"),
                batch("2026-01-01T00:00:00.100500Z", "2026-01-01T00:00:00.100000Z"),
                batch("2026-01-01T00:00:00.199000Z", "2026-01-01T00:00:00.200000Z"),
                batch("2026-01-01T00:00:00.303000Z", "2026-01-01T00:00:00.300000Z"),
            ],
        };
        let f = RateFigures::from_status(&status, Duration::from_millis(100)).unwrap();
        assert_eq!(f.early, 1);
        assert_eq!(f.before_scheduled, 1);
        assert_eq!(f.drift, 3_000);
        assert_eq!(f.max, 3_000);
        assert_eq!(f.off_grid, 0);
        assert_eq!(f.reanchored, 0);
    }
}
