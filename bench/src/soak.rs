//! The soak of issue 7 (point 6): a long run at half the measured peak, to show
//! that memory and latency stay flat while the service takes work, processes
//! it and answers about it, all at once.
//!
//! First a closed-loop run of the mixed load (half the connections `POST
//! /ingest`, half `GET /status/{id}`) finds the peak. Then an open-loop, paced
//! load at a fraction of it, on the same connections: each sends on a fixed
//! schedule whatever the answers do, so that a server slowing down shows as
//! latency instead of as fewer requests (no coordinated omission). A row of
//! figures every `--soak-report-every`; at the end the first window against
//! the last.
//!
//! The fraction applies to each route's own peak rate, not to the total split
//! evenly: in the closed loop a `GET` is answered several times faster than a
//! `POST`, so the peak is mostly `GET`s, and half of the total as half `POST`s
//! would ask for more `POST`s than the service took at its peak, an overload
//! rather than a soak.
//!
//! With `--soak-retention` the server prunes what ended longer ago than that
//! (a pass every [`RETENTION_PERIOD`]), and each row shows the database's size
//! on disk: the SQLite file and its WAL, or PostgreSQL's
//! `pg_database_size`. At the end the sizes over the last [`SIZE_SPAN`] must
//! stay within [`SIZE_TOLERANCE`] of their mean: pruning keeps pace with the
//! load and the freed space is reused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};

use crate::http::{Connection, with_deadline};
use crate::load::{self, LoadSpec, Requests, Workload, new_histogram, thousands};
use crate::report::{mib, secs};
use crate::scenarios::{BATCH_SIZE, Bench};
use crate::server::{Database, Server, cpu_time_of, machine_busy_time};

/// `--max-queued-ids` of the soak's server: far past any queue the soak can
/// build, so that no `POST` is refused for it (429s are still counted apart).
const NO_QUEUE_LIMIT: &str = "1000000000000";

/// A request still unanswered after this long counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to let the dispatcher drain what the peak run queued, so that the
/// soak's first window does not start on a backlog (which would make its
/// figures worse, and so "flat" easier to meet).
const DRAIN_LIMIT: Duration = Duration::from_secs(300);



/// The rule for "flat": the last window's RSS at most 1.2 × the first's + 8 MB,
/// and each route's last-window p99 at most 2 × the first's + 1 ms. The slack
/// covers what is not growth: allocator and page-cache warm-up, and the noise
/// of a shared 2-core machine in a single window.
const RSS_FACTOR: f64 = 1.2;
const RSS_SLACK: u64 = 8 * 1024 * 1024;
const P99_FACTOR: u32 = 2;
const P99_SLACK: Duration = Duration::from_millis(1);
const RULE: &str = "flat = last-window RSS ≤ 1.2 × first-window RSS + 8 MB, and per route last-window p99 ≤ 2 × first-window p99 + 1 ms";

/// Error messages kept to print, of the whole soak.
const FIRST_ERRORS: usize = 5;

/// `--retention-period` of the soak's server with `--soak-retention`: the
/// service's default (a pass a minute) would let a 1-minute retention keep up
/// to two minutes of history, and the size would saw between passes.
const RETENTION_PERIOD: &str = "10s";

/// With retention, the ingestions that the `GET`s read wait in this queue,
/// paused: a request that has not ended is never pruned, so every `GET` finds
/// its request all soak long (an ended one would be gone a retention after it
/// ended, and the `GET`s would measure 404s).
const HELD_QUEUE: &str = "held";

/// With retention, the database size is judged over this last part of the
/// soak: the first minutes fill the database up to what the retention keeps.
const SIZE_SPAN: Duration = Duration::from_secs(5 * 60);

/// "Flat" for the database size: every size at a row's end over
/// [`SIZE_SPAN`] within this fraction of their mean.
const SIZE_TOLERANCE: f64 = 0.10;

impl Bench {
    /// The soak: peak, then a paced load at a fraction of it for a long time.
    /// With `retention`, the server prunes what ended longer ago than that,
    /// and the database size must stay flat over the last [`SIZE_SPAN`].
    pub async fn soak(&mut self, retention: Option<Duration>) -> anyhow::Result<()> {
        let settings = self.settings.clone();
        let connections = settings.connections;
        ensure!(
            connections >= 2,
            "the soak mixes two routes over its connections: --connections must be at least 2"
        );
        println!(
            "\n== Soak (issue 7): peak of POST /ingest + GET /status/{{id}} over {connections} connections, then {:.0}% of it, paced, for {}{} ==",
            settings.soak_fraction * 100.0,
            humantime::format_duration(settings.soak_duration),
            retention.map_or(String::new(), |r| format!(
                ", with retention {} (issue 11)",
                humantime::format_duration(r)
            ))
        );
        let db = self.database.create("soak")?;
        let in_flight = settings.dispatch_in_flight.to_string();
        let mut args = vec![
            "--interval",
            "0",
            "--mock-latency",
            "0ms",
            "--max-in-flight",
            &in_flight,
            "--max-queued-ids",
            NO_QUEUE_LIMIT,
        ];
        let retention_flag = retention.map(|r| humantime::format_duration(r).to_string());
        let queues_file = self.log_dir.join("queues-soak.toml");
        let queues_arg = queues_file.display().to_string();
        if let Some(retention) = &retention_flag {
            write_held_queue(&queues_file)?;
            args.extend([
                "--retention",
                retention.as_str(),
                "--retention-period",
                RETENTION_PERIOD,
                "--queues-file",
                queues_arg.as_str(),
            ]);
        }
        let mut server = self.start_server(&db, "soak", &args)?;
        let sizer = SizeProbe::of(&db)?;
        let mut stats = StatsReader::new(server.addr());
        let paths = if retention.is_some() {
            let paths = create_held_ingestions(
                server.addr(),
                settings.status_ingestions,
                settings.ids_per_request,
            )
            .await?;
            // Nothing else is queued yet: every batch waiting is held.
            stats.held = stats.read().await?.0.waiting;
            println!(
                "  {} batches held; the queue figures below leave them out",
                thousands(stats.held)
            );
            paths
        } else {
            self.status_paths(&server).await?
        };
        let workload = Workload::Mixed {
            bodies: self.ingest_bodies(21),
            paths,
        };

        println!(
            "  -- peak: closed loop, {connections} connections (even ones POST, odd ones GET), {} after a {} warm-up",
            secs(settings.soak_peak_duration),
            secs(settings.warmup)
        );
        self.settle().await;
        let spec = LoadSpec {
            connections,
            warmup: settings.warmup,
            duration: settings.soak_peak_duration,
        };
        let peak = load::run(&server, workload.clone(), &spec).await?;
        peak.print();
        let route_rate = |name: &str| -> anyhow::Result<f64> {
            let route = peak
                .routes
                .iter()
                .find(|r| r.name == name)
                .with_context(|| format!("no {name} in the peak run"))?;
            ensure!(
                route.ok > 0,
                "no {name} succeeded in the peak run: nothing to soak at"
            );
            Ok(route.per_second(peak.window) * settings.soak_fraction)
        };
        // What the dispatcher keeps up with, measured as it drains what the
        // peak run queued, caps the POST rate: more than that and the backlog
        // grows all soak long, so nothing ends and nothing can be pruned — an
        // overload, not a soak.
        let dispatch_peak = drain(&mut server, &mut stats).await?;
        let http_post_rate = route_rate(load::INGEST)?;
        let batches_per_post = settings.ids_per_request.div_ceil(BATCH_SIZE) as f64;
        let post_rate = match dispatch_peak {
            Some(batches_per_second) => {
                let sustained = batches_per_second / batches_per_post * settings.soak_fraction;
                if sustained < http_post_rate {
                    println!(
                        "  POST paced at {:.0}% of the dispatcher's peak ({} batches/s, {} batches a request): {} POST/s instead of {} (that fraction of the HTTP peak)",
                        settings.soak_fraction * 100.0,
                        thousands(batches_per_second as u64),
                        batches_per_post,
                        thousands(sustained as u64),
                        thousands(http_post_rate as u64),
                    );
                }
                sustained.min(http_post_rate)
            }
            None => http_post_rate,
        };
        let plan = Plan {
            post_rate,
            get_rate: route_rate(load::STATUS)?,
            connections,
            duration: settings.soak_duration,
            report_every: settings.soak_report_every,
            read_stats: !settings.soak_skip_stats,
        };
        let rate = plan.post_rate + plan.get_rate;

        match sizer.read().await {
            Ok(size) => println!(
                "  database at the soak's start: {} ({})",
                mib(size.counted()),
                size.describe()
            ),
            Err(error) => eprintln!("  (reading the database size failed: {error:#})"),
        }

        println!(
            "  -- soak: open loop, {:.0}% of each route's peak for {}: {} POST/s ({} connections, each every {}) + {} GET/s ({} connections, each every {}) = {} req/s",
            settings.soak_fraction * 100.0,
            humantime::format_duration(settings.soak_duration),
            thousands(plan.post_rate as u64),
            plan.route_connections(true),
            load::ms(plan.period(true)),
            thousands(plan.get_rate as u64),
            plan.route_connections(false),
            load::ms(plan.period(false)),
            thousands(rate as u64),
        );
        println!(
            "     latency from each request's scheduled send time (a connection that falls behind sends at once, and the wait counts); times in ms"
        );
        self.settle().await;
        let soak = paced_run(&mut server, &mut stats, &sizer, &workload, &plan).await?;
        let hwm = server.memory()?.peak;
        server.stop()?;

        soak.print_totals(rate, hwm, retention);
        self.add_soak_rows(&peak, &plan, &soak, retention);
        Ok(())
    }

    fn add_soak_rows(
        &mut self,
        peak: &load::LoadResult,
        plan: &Plan,
        soak: &SoakResult,
        retention: Option<Duration>,
    ) {
        let rate = plan.post_rate + plan.get_rate;
        let per_route = peak
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.name.split(' ').next().unwrap_or(r.name),
                    thousands(r.per_second(peak.window) as u64)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        self.summary.add(
            format!("soak: peak, mixed closed loop, {} conn.", peak.connections),
            format!(
                "{} req/s ({per_route})",
                thousands(peak.per_second() as u64)
            ),
            "",
            None,
        );
        self.summary.add(
            format!(
                "soak: {:.0}% of peak, paced, {}",
                self.settings.soak_fraction * 100.0,
                humantime::format_duration(self.settings.soak_duration)
            ),
            format!(
                "{} req/s offered (POST {}, GET {}), {} achieved; {} errors ({} were 429)",
                thousands(rate as u64),
                thousands(plan.post_rate as u64),
                thousands(plan.get_rate as u64),
                thousands(soak.achieved() as u64),
                soak.errors(),
                soak.throttled()
            ),
            "",
            None,
        );
        let (Some(first), Some(last)) = (soak.rows.first(), soak.rows.last()) else {
            return;
        };
        let span = |row: &Row| format!("{}–{}", clock(row.end - row.length), clock(row.end));
        let windows = format!("{} vs {}", span(first), span(last));
        self.summary.add(
            format!("soak: RSS, first vs last window ({windows})"),
            format!(
                "{} → {} ({:+.1} MB)",
                mib(first.rss),
                mib(last.rss),
                (last.rss as f64 - first.rss as f64) / (1024.0 * 1024.0)
            ),
            "flat",
            Some(rss_flat(first.rss, last.rss)),
        );
        for (name, a, b) in [
            ("POST /ingest", &first.post, &last.post),
            ("GET /status", &first.get, &last.get),
        ] {
            self.summary.add(
                format!("soak: {name} p99, first vs last window"),
                format!(
                    "{} → {} (p50 {} → {})",
                    load::ms(p(a, 0.99)),
                    load::ms(p(b, 0.99)),
                    load::ms(p(a, 0.5)),
                    load::ms(p(b, 0.5))
                ),
                "flat",
                Some(p99_flat(a, b)),
            );
        }
        let queued = |row: &Row| row.queue.waiting().map_or("-".to_string(), thousands);
        self.summary.add(
            "soak: batches waiting, first vs last window",
            format!("{} → {}", queued(first), queued(last)),
            "",
            None,
        );
        let size = |row: &Row| row.size.map_or("?".to_string(), |s| mib(s.counted()));
        self.summary.add(
            "soak: database size, first vs last window",
            format!("{} → {}", size(first), size(last)),
            "",
            None,
        );
        if let Some(retention) = retention {
            let span = SizeSpan::of(&soak.rows, soak.duration);
            self.summary.add(
                format!(
                    "soak: database size over the last {} (retention {})",
                    humantime::format_duration(SIZE_SPAN),
                    humantime::format_duration(retention)
                ),
                span.as_ref().map_or_else(
                    || "no sizes read".to_string(),
                    |s| {
                        format!(
                            "{} – {}, {:+.1}% / {:+.1}% of the mean",
                            mib(s.min),
                            mib(s.max),
                            s.below() * 100.0,
                            s.above() * 100.0
                        )
                    },
                ),
                "flat (±10% of the mean)",
                Some(span.is_some_and(|s| s.flat())),
            );
        }
    }
}

/// Waits for the dispatcher to process what the peak run queued; answers
/// the rate it drained at (batches a second), its peak with no HTTP load,
/// when there was enough backlog to measure it.
async fn drain(server: &mut Server, stats: &mut StatsReader) -> anyhow::Result<Option<f64>> {
    let started = Instant::now();
    let mut backlog = None;
    loop {
        server.check_alive()?;
        let queue = stats.read().await?.0;
        let left = queue.waiting + queue.processing;
        let first = *backlog.get_or_insert(left);
        let took = started.elapsed();
        let rate = (first > left && took > Duration::from_secs(1))
            .then(|| (first - left) as f64 / took.as_secs_f64());
        if left == 0 {
            println!(
                "  the peak run left {} batches queued; drained in {}{}",
                thousands(first),
                secs(took),
                rate.map_or(String::new(), |rate| format!(
                    " (about {} batches/s)",
                    thousands(rate as u64)
                ))
            );
            return Ok(rate);
        }
        if took > DRAIN_LIMIT {
            println!(
                "  the peak run left {} batches queued; {} still queued after {} (about {} batches/s): the soak starts on them",
                thousands(first),
                thousands(left),
                secs(DRAIN_LIMIT),
                thousands(rate.unwrap_or(0.0) as u64),
            );
            return Ok(rate);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The shape of the paced run.
struct Plan {
    /// `POST /ingest` per second, over the even connections.
    post_rate: f64,
    /// `GET /status/{id}` per second, over the odd connections.
    get_rate: f64,
    connections: usize,
    duration: Duration,
    report_every: Duration,
    /// Read `GET /stats` at each row (not with `--soak-skip-stats`).
    read_stats: bool,
}

impl Plan {
    /// How many connections carry the route (the even ones `POST`).
    fn route_connections(&self, ingest: bool) -> usize {
        if ingest {
            self.connections.div_ceil(2)
        } else {
            self.connections / 2
        }
    }

    /// Time between two sends of one connection of the route: its
    /// connections / its rate.
    fn period(&self, ingest: bool) -> Duration {
        let rate = if ingest {
            self.post_rate
        } else {
            self.get_rate
        };
        Duration::from_secs_f64(self.route_connections(ingest) as f64 / rate)
    }
}

/// What the paced connections counted since the last row.
struct Window {
    /// Latency of the successful `POST`s, in µs, from their scheduled send.
    post: Histogram<u64>,
    /// The same for the `GET`s.
    get: Histogram<u64>,
    /// Actual send − scheduled send, in µs: tokio's timer has a 1 ms tick, so
    /// up to about 1 ms of it is the load generator's own; more means a
    /// connection fell behind its schedule (a slow answer, or no CPU for this
    /// tool).
    lag: Histogram<u64>,
    /// Answers other than 200 and failed requests (429s among them).
    errors: u64,
    /// 429s: the queue limit, which the soak sets out of reach.
    throttled: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            post: new_histogram(),
            get: new_histogram(),
            lag: new_histogram(),
            errors: 0,
            throttled: 0,
        }
    }
}

/// Shared by the paced connections and the reporter, which swaps the window
/// out at each row.
struct Tally {
    window: Window,
    first_errors: Vec<String>,
}

impl Tally {
    fn error(&mut self, throttled: bool, message: impl FnOnce() -> String) {
        self.window.errors += 1;
        if throttled {
            self.window.throttled += 1;
        }
        if self.first_errors.len() < FIRST_ERRORS {
            self.first_errors.push(message());
        }
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // A panicking connection task is reported by its join; its counts stand.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One row: a report window.
struct Row {
    /// The window's end, from the start of the paced run.
    end: Duration,
    length: Duration,
    post: Histogram<u64>,
    get: Histogram<u64>,
    lag: Histogram<u64>,
    errors: u64,
    throttled: u64,
    /// Server RSS at the window's end.
    rss: u64,
    server_cores: f64,
    client_cores: f64,
    other_cores: f64,
    /// From `GET /stats` at the window's end.
    queue: Probe,
    /// The database on disk at the window's end; `None` if it could not be
    /// read.
    size: Option<DbSize>,
}

impl Row {
    fn ok(&self) -> u64 {
        self.post.len() + self.get.len()
    }

    fn print_header() {
        println!(
            "  {:>5} {:>7} | {:>8} {:>7} {:>8} | {:>8} {:>7} {:>8} | {:>7} {:>6} {:>6} | {:>9} {:>6} | {:>7} {:>6} | {:>8} {:>6} {:>9}",
            "time",
            "req/s",
            "POST p50",
            "p99",
            "max",
            "GET p50",
            "p99",
            "max",
            "RSS MB",
            "server",
            "rest",
            "queued",
            "/stats",
            "lag p99",
            "errors",
            "DB MB",
            "WAL MB",
            "pruned"
        );
    }

    fn print(&self) {
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
        let (queued, stats, pruned) = match self.queue {
            Probe::Read(q, took) => (
                thousands(q.waiting),
                ms(took),
                q.pruned.map_or("?".to_string(), thousands),
            ),
            Probe::Failed => ("?".to_string(), "?".to_string(), "?".to_string()),
            Probe::Skipped => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let megabytes = |bytes: u64| format!("{:.1}", bytes as f64 / (1024.0 * 1024.0));
        let (size, wal) = match self.size {
            Some(size @ DbSize::Sqlite { wal, .. }) => (megabytes(size.counted()), megabytes(wal)),
            Some(size @ DbSize::Postgres(_)) => (megabytes(size.counted()), "-".to_string()),
            None => ("?".to_string(), "?".to_string()),
        };
        println!(
            "  {:>5} {:>7} | {:>8} {:>7} {:>8} | {:>8} {:>7} {:>8} | {:>7.1} {:>6.2} {:>6.2} | {:>9} {:>6} | {:>7} {:>6} | {:>8} {:>6} {:>9}",
            clock(self.end),
            thousands((self.ok() as f64 / self.length.as_secs_f64()) as u64),
            ms(p(&self.post, 0.5)),
            ms(p(&self.post, 0.99)),
            ms(max(&self.post)),
            ms(p(&self.get, 0.5)),
            ms(p(&self.get, 0.99)),
            ms(max(&self.get)),
            self.rss as f64 / (1024.0 * 1024.0),
            self.server_cores,
            self.other_cores,
            queued,
            stats,
            ms(p(&self.lag, 0.99)),
            self.errors,
            size,
            wal,
            pruned
        );
    }
}

struct SoakResult {
    rows: Vec<Row>,
    duration: Duration,
    first_errors: Vec<String>,
}

impl SoakResult {
    fn achieved(&self) -> f64 {
        self.rows.iter().map(Row::ok).sum::<u64>() as f64 / self.duration.as_secs_f64()
    }

    fn errors(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum()
    }

    fn throttled(&self) -> u64 {
        self.rows.iter().map(|r| r.throttled).sum()
    }

    fn print_totals(&self, rate: f64, hwm: u64, retention: Option<Duration>) {
        let mut post = new_histogram();
        let mut get = new_histogram();
        let mut lag = new_histogram();
        for row in &self.rows {
            // Same bounds everywhere: adding cannot fail.
            let _ = post.add(&row.post);
            let _ = get.add(&row.get);
            let _ = lag.add(&row.lag);
        }
        println!(
            "  whole soak: {} answers in {}, {} req/s achieved of {} offered; {} errors ({} were 429); server RSS peak (VmHWM) {}",
            thousands(post.len() + get.len()),
            humantime::format_duration(self.duration),
            thousands(self.achieved() as u64),
            thousands(rate as u64),
            self.errors(),
            self.throttled(),
            mib(hwm)
        );
        for (name, h) in [("POST /ingest", &post), ("GET /status", &get)] {
            println!(
                "    {name:<13} {} answers, p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                thousands(h.len()),
                load::ms(p(h, 0.5)),
                load::ms(p(h, 0.9)),
                load::ms(p(h, 0.99)),
                load::ms(p(h, 0.999)),
                load::ms(max(h))
            );
        }
        println!(
            "    send lag (actual − scheduled send; ≤ ~1 ms is tokio's timer tick): p50 {}  p99 {}  max {}",
            load::ms(p(&lag, 0.5)),
            load::ms(p(&lag, 0.99)),
            load::ms(max(&lag))
        );
        let cores = |f: fn(&Row) -> f64| {
            self.rows
                .iter()
                .map(|r| f(r) * r.length.as_secs_f64())
                .sum::<f64>()
                / self.duration.as_secs_f64()
        };
        println!(
            "    CPU: server {:.2} cores, load generator {:.2} cores, rest of the machine {:.2} cores (of {})",
            cores(|r| r.server_cores),
            cores(|r| r.client_cores),
            cores(|r| r.other_cores),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for error in &self.first_errors {
            println!("    error: {error}");
        }
        let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) else {
            return;
        };
        let span = |row: &Row| format!("{}–{}", clock(row.end - row.length), clock(row.end));
        println!(
            "  first window ({}) vs last window ({}); {RULE}",
            span(first),
            span(last)
        );
        let busiest = first.other_cores.max(last.other_cores);
        if busiest > 0.25 {
            println!(
                "    warning: the rest of the machine took {busiest:.2} cores in the first or the last window; their latencies compare the neighbours as much as the service"
            );
        }
        let verdict = |flat: bool| if flat { "flat" } else { "NOT flat" };
        println!(
            "    RSS           {} → {} ({:+.1} MB, {:+.0}%): {}",
            mib(first.rss),
            mib(last.rss),
            (last.rss as f64 - first.rss as f64) / (1024.0 * 1024.0),
            (last.rss as f64 / first.rss.max(1) as f64 - 1.0) * 100.0,
            verdict(rss_flat(first.rss, last.rss))
        );
        for (name, a, b) in [
            ("POST /ingest", &first.post, &last.post),
            ("GET /status", &first.get, &last.get),
        ] {
            let (pa, pb) = (p(a, 0.99), p(b, 0.99));
            println!(
                "    {name:<13} p99 {} → {} ({:+.3} ms), p50 {} → {}: {}",
                load::ms(pa),
                load::ms(pb),
                (pb.as_secs_f64() - pa.as_secs_f64()) * 1e3,
                load::ms(p(a, 0.5)),
                load::ms(p(b, 0.5)),
                verdict(p99_flat(a, b))
            );
        }
        let most = self.rows.iter().filter_map(|r| r.queue.waiting()).max();
        if let (Some(most), Some(b)) = (most, last.queue.waiting()) {
            println!(
                "    queue         {} → {} batches waiting (the most at a row's end: {})",
                first.queue.waiting().map_or("-".to_string(), thousands),
                thousands(b),
                thousands(most)
            );
        }
        let slowest = self
            .rows
            .iter()
            .filter_map(|r| match r.queue {
                Probe::Read(_, took) => Some(took),
                _ => None,
            })
            .max();
        self.print_sizes(retention);
        if let Some(slowest) = slowest.filter(|t| *t >= Duration::from_millis(50)) {
            println!(
                "    note: GET /stats took up to {}. It counts every batch, so it slows as the database grows, and on SQLite it holds one of the server's reader connections meanwhile: reads sent to that connection wait behind it, so the window after a slow GET /stats shows it in its GET latency. --soak-skip-stats leaves it out",
                load::ms(slowest)
            );
        }
    }
}

impl SoakResult {
    /// The database size, first against last window; with retention, the
    /// verdict over the last [`SIZE_SPAN`].
    fn print_sizes(&self, retention: Option<Duration>) {
        let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) else {
            return;
        };
        let size = |row: &Row| row.size.map_or("?".to_string(), |s| mib(s.counted()));
        println!(
            "    database      {} → {} ({})",
            size(first),
            size(last),
            last.size.map_or("not read".to_string(), |s| s.describe())
        );
        let Some(retention) = retention else {
            return;
        };
        match SizeSpan::of(&self.rows, self.duration) {
            Some(span) => println!(
                "    database size over the last {} ({} sizes, {}–{}; retention {}): min {}, max {}, mean {}, {:+.1}% / {:+.1}% of the mean: flat (±{:.0}%) {}",
                humantime::format_duration(SIZE_SPAN),
                span.samples,
                clock(span.from),
                clock(self.duration),
                humantime::format_duration(retention),
                mib(span.min),
                mib(span.max),
                mib(span.mean as u64),
                span.below() * 100.0,
                span.above() * 100.0,
                SIZE_TOLERANCE * 100.0,
                if span.flat() { "met" } else { "MISSED" }
            ),
            None => println!(
                "    database size over the last {}: no size was read: flat MISSED",
                humantime::format_duration(SIZE_SPAN)
            ),
        }
    }
}

/// The database sizes at the ends of the rows of the soak's last
/// [`SIZE_SPAN`] (the row that ends where the span starts included: its size
/// is the span's first).
#[derive(Debug, Clone, Copy, PartialEq)]
struct SizeSpan {
    /// Where the span starts, from the start of the paced run.
    from: Duration,
    samples: usize,
    min: u64,
    max: u64,
    mean: f64,
}

impl SizeSpan {
    /// `None` if no row of the span has a size. A row whose size could not
    /// be read is left out, not counted as zero.
    fn of(rows: &[Row], duration: Duration) -> Option<Self> {
        let from = duration.saturating_sub(SIZE_SPAN);
        let sizes: Vec<u64> = rows
            .iter()
            .filter(|r| r.end >= from)
            .filter_map(|r| r.size.map(|s| s.counted()))
            .collect();
        Self::from_sizes(from, &sizes)
    }

    fn from_sizes(from: Duration, sizes: &[u64]) -> Option<Self> {
        let min = *sizes.iter().min()?;
        let max = *sizes.iter().max()?;
        let mean = sizes.iter().sum::<u64>() as f64 / sizes.len() as f64;
        Some(Self {
            from,
            samples: sizes.len(),
            min,
            max,
            mean,
        })
    }

    /// The smallest size against the mean, as a fraction (≤ 0).
    fn below(&self) -> f64 {
        self.min as f64 / self.mean.max(1.0) - 1.0
    }

    /// The largest size against the mean, as a fraction (≥ 0).
    fn above(&self) -> f64 {
        self.max as f64 / self.mean.max(1.0) - 1.0
    }

    fn flat(&self) -> bool {
        self.below() >= -SIZE_TOLERANCE && self.above() <= SIZE_TOLERANCE
    }
}

/// How big the soak's database is on disk.
#[derive(Debug, Clone, Copy)]
enum DbSize {
    /// The SQLite file, its write-ahead log and the log's shared-memory index.
    Sqlite { main: u64, wal: u64, shm: u64 },
    /// `pg_database_size`: every table, index and TOAST table of the
    /// database, dead rows not yet vacuumed included (not the cluster's WAL).
    Postgres(u64),
}

impl DbSize {
    /// The size that is judged: the SQLite file with its WAL (what a disk
    /// holds for it; the WAL grows between checkpoints), or PostgreSQL's.
    /// SQLite's `-shm` is left out: a few pages of index into the WAL, rebuilt
    /// from it, not data.
    fn counted(&self) -> u64 {
        match *self {
            Self::Sqlite { main, wal, .. } => main + wal,
            Self::Postgres(bytes) => bytes,
        }
    }

    fn describe(&self) -> String {
        match *self {
            Self::Sqlite { main, wal, shm } => format!(
                "SQLite file {} + -wal {}; -shm {} KB, not counted",
                mib(main),
                mib(wal),
                shm / 1024
            ),
            Self::Postgres(_) => "pg_database_size(current_database())".to_string(),
        }
    }
}

/// Where to read the soak's database size from.
#[derive(Debug, Clone)]
enum SizeProbe {
    /// The SQLite file; its `-wal` and `-shm` sit beside it.
    Sqlite(PathBuf),
    /// The database's URL, for `psql`.
    Postgres(String),
}

impl SizeProbe {
    fn of(db: &Database) -> anyhow::Result<Self> {
        let url = db.url();
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let path = rest.split('?').next().unwrap_or(rest);
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "cannot tell the size of the database at {url}"
        );
        Ok(Self::Postgres(url.to_string()))
    }

    /// Reads the size off this tool's runtime thread: `psql` takes tens of
    /// milliseconds, which would hold up the paced connections' sends.
    async fn read(&self) -> anyhow::Result<DbSize> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.read_blocking())
            .await
            .context("the database size reader panicked")?
    }

    fn read_blocking(&self) -> anyhow::Result<DbSize> {
        match self {
            Self::Sqlite(path) => {
                // The WAL and its index exist only while a connection is open
                // (and the WAL can be truncated to nothing): absent is 0.
                let len = |suffix: &str| {
                    let mut name = path.clone().into_os_string();
                    name.push(suffix);
                    std::fs::metadata(&name).map_or(0, |m| m.len())
                };
                let main = std::fs::metadata(path)
                    .with_context(|| format!("reading the size of {}", path.display()))?
                    .len();
                Ok(DbSize::Sqlite {
                    main,
                    wal: len("-wal"),
                    shm: len("-shm"),
                })
            }
            Self::Postgres(url) => {
                let out = Command::new("psql")
                    .args([
                        url.as_str(),
                        "-Atqc",
                        "SELECT pg_database_size(current_database())",
                    ])
                    .output()
                    .context("running psql (install postgresql-client)")?;
                ensure!(
                    out.status.success(),
                    "psql pg_database_size failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let bytes = text
                    .trim()
                    .parse()
                    .with_context(|| format!("psql answered {text:?} for pg_database_size"))?;
                Ok(DbSize::Postgres(bytes))
            }
        }
    }
}

fn rss_flat(first: u64, last: u64) -> bool {
    last as f64 <= first as f64 * RSS_FACTOR + RSS_SLACK as f64
}

/// A route that got no answer in the last window is not flat: it stalled.
fn p99_flat(first: &Histogram<u64>, last: &Histogram<u64>) -> bool {
    !last.is_empty() && p(last, 0.99) <= p(first, 0.99) * P99_FACTOR + P99_SLACK
}

fn p(h: &Histogram<u64>, quantile: f64) -> Duration {
    Duration::from_micros(h.value_at_quantile(quantile))
}

fn max(h: &Histogram<u64>) -> Duration {
    Duration::from_micros(h.max())
}

/// 75 s as "1:15".
fn clock(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Runs the paced load and prints a row every `plan.report_every`.
async fn paced_run(
    server: &mut Server,
    stats: &mut StatsReader,
    sizer: &SizeProbe,
    workload: &Workload,
    plan: &Plan,
) -> anyhow::Result<SoakResult> {
    let tally = Arc::new(Mutex::new(Tally {
        window: Window::new(),
        first_errors: Vec::new(),
    }));
    // Time for every connection to open before the first send.
    let start = Instant::now() + Duration::from_millis(500);
    let until = start + plan.duration;
    let mut tasks = Vec::with_capacity(plan.connections);
    for index in 0..plan.connections {
        let requests = Requests::new(workload, index as u64);
        let ingest = requests.is_ingest();
        let period = plan.period(ingest);
        // Spread each route's schedules over one of its periods, so that the
        // sends are even in time rather than in bursts.
        let first =
            start + period.mul_f64((index / 2) as f64 / plan.route_connections(ingest) as f64);
        tasks.push(tokio::spawn(paced(
            server.addr(),
            requests,
            first,
            period,
            until,
            Arc::clone(&tally),
        )));
    }
    tokio::time::sleep_until(start.into()).await;
    Row::print_header();
    let mut rows = Vec::new();
    let mut before = (server.cpu_time(), cpu_time_of("self"), machine_busy_time());
    let mut window_start = start;
    let mut last = false;
    while !last {
        let end = (window_start + plan.report_every).min(until);
        last = end >= until;
        tokio::time::sleep_until(end.into()).await;
        if last {
            // The answers still on their way belong to the last window.
            for task in tasks.drain(..) {
                task.await.context("a paced connection panicked")?;
            }
        }
        let now = (server.cpu_time(), cpu_time_of("self"), machine_busy_time());
        let window = std::mem::replace(&mut lock(&tally).window, Window::new());
        server.check_alive()?;
        let rss = server.memory()?.rss;
        // The last read comes after the load has stopped: it disturbs nothing.
        let queue = if plan.read_stats || last {
            match stats.read().await {
                Ok((queue, took)) => Probe::Read(queue, took),
                Err(error) => {
                    eprintln!("  (GET /stats failed: {error:#})");
                    Probe::Failed
                }
            }
        } else {
            Probe::Skipped
        };
        let size = match sizer.read().await {
            Ok(size) => Some(size),
            Err(error) => {
                eprintln!("  (reading the database size failed: {error:#})");
                None
            }
        };
        let length = end - window_start;
        let cores = |d: Duration| d.as_secs_f64() / length.as_secs_f64();
        let server_cpu = now.0.saturating_sub(before.0);
        let client_cpu = now.1.saturating_sub(before.1);
        let machine_cpu = now.2.saturating_sub(before.2);
        let row = Row {
            end: end - start,
            length,
            post: window.post,
            get: window.get,
            lag: window.lag,
            errors: window.errors,
            throttled: window.throttled,
            rss,
            server_cores: cores(server_cpu),
            client_cores: cores(client_cpu),
            other_cores: cores(
                machine_cpu
                    .saturating_sub(server_cpu)
                    .saturating_sub(client_cpu),
            ),
            queue,
            size,
        };
        row.print();
        rows.push(row);
        before = now;
        window_start = end;
    }
    let first_errors = std::mem::take(&mut lock(&tally).first_errors);
    Ok(SoakResult {
        rows,
        duration: plan.duration,
        first_errors,
    })
}

/// One paced connection: its k-th request is due at `first + k × period`,
/// until `until`. Latency runs from that due time, so a connection held up by
/// a slow answer sends its next request at once and the wait counts; nothing
/// is skipped.
async fn paced(
    addr: SocketAddr,
    mut requests: Requests,
    first: Instant,
    period: Duration,
    until: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let ingest = requests.is_ingest();
    let mut connection = Connection::open(addr).await.ok();
    for k in 0u32.. {
        let due = first + period * k;
        if due >= until {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        let (method, path, body) = requests.next();
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match Connection::open(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(error) => {
                    lock(&tally).error(false, || format!("{error:#}"));
                    continue;
                }
            },
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, conn.request(method, path, body)).await;
        let done = Instant::now();
        let mut counts = lock(&tally);
        match answer {
            Ok(Ok((StatusCode::OK, _))) => {
                let micros = (done.duration_since(due).as_micros() as u64).max(1);
                let window = &mut counts.window;
                if ingest {
                    window.post.saturating_record(micros);
                } else {
                    window.get.saturating_record(micros);
                }
                window
                    .lag
                    .saturating_record(sent.duration_since(due).as_micros() as u64);
            }
            Ok(Ok((status, body))) => {
                counts.error(status == StatusCode::TOO_MANY_REQUESTS, || {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                    format!("{path} answered {status}: {text}")
                });
            }
            Ok(Err(error)) => {
                counts.error(false, || format!("{path}: {error:#}"));
                connection = None;
            }
            Err(_) => {
                counts.error(false, || {
                    format!("{path}: no answer within {}", secs(REQUEST_TIMEOUT))
                });
                connection = None;
            }
        }
    }
}

/// What `GET /stats` said at a row's end, and how long it took.
#[derive(Debug, Clone, Copy)]
enum Probe {
    Read(Queue, Duration),
    Failed,
    /// `--soak-skip-stats`.
    Skipped,
}

impl Probe {
    fn waiting(&self) -> Option<u64> {
        match self {
            Self::Read(queue, _) => Some(queue.waiting),
            _ => None,
        }
    }
}

/// Batches waiting (yet to start, or waiting to retry) and processing.
#[derive(Debug, Clone, Copy)]
struct Queue {
    waiting: u64,
    processing: u64,
    /// Requests pruned so far (`sluice_pruned_total{kind="ingestions"}`);
    /// `None` if `GET /metrics` could not be read.
    pruned: Option<u64>,
}

/// Reads `GET /stats` over a connection of its own, reopened after a failure.
struct StatsReader {
    addr: SocketAddr,
    connection: Option<Connection>,
    /// Batches of the held queue (with retention), left out of the counts:
    /// they wait all soak long by design.
    held: u64,
}

impl StatsReader {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            connection: None,
            held: 0,
        }
    }

    /// The queue, and how long `GET /stats` took (it counts every batch by
    /// priority and status, so its time grows with the database: worth
    /// watching in a soak).
    async fn read(&mut self) -> anyhow::Result<(Queue, Duration)> {
        // The server closes a connection idle for its keep-alive timeout
        // (10 s), shorter than a row: a kept connection found closed is
        // opened again once, on a new connection.
        let reused = self.connection.is_some();
        let mut result = with_deadline("GET /stats", REQUEST_TIMEOUT, self.try_read()).await;
        if result.is_err() {
            self.connection = None;
            if reused {
                result = with_deadline("GET /stats", REQUEST_TIMEOUT, self.try_read()).await;
                if result.is_err() {
                    self.connection = None;
                }
            }
        }
        result
    }

    async fn try_read(&mut self) -> anyhow::Result<(Queue, Duration)> {
        let conn = match &mut self.connection {
            Some(conn) => conn,
            None => self.connection.insert(Connection::open(self.addr).await?),
        };
        let started = Instant::now();
        let (status, body) = conn.request(Method::GET, "/stats", None).await?;
        let took = started.elapsed();
        ensure!(
            status == StatusCode::OK,
            "GET /stats answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        let stats: serde_json::Value =
            serde_json::from_slice(&body).context("reading the GET /stats answer")?;
        let queue = stats
            .get("queue")
            .and_then(serde_json::Value::as_object)
            .context("no queue in the GET /stats answer")?;
        let count = |status: &str| -> u64 {
            queue
                .values()
                .filter_map(|by_status| by_status.get(status)?.as_u64())
                .sum()
        };
        // After the timed `GET /stats`, so that its time is its own.
        let pruned = match conn.request(Method::GET, "/metrics", None).await {
            Ok((StatusCode::OK, body)) => {
                pruned_of(&String::from_utf8_lossy(&body), "ingestions").or(Some(0))
            }
            _ => None,
        };
        Ok((
            Queue {
                waiting: (count("yet_to_start") + count("retrying")).saturating_sub(self.held),
                processing: count("triggered"),
                pruned,
            },
            took,
        ))
    }
}

/// A `sluice_pruned_total{kind}` counter in a `GET /metrics` answer; `None`
/// before the first prune, when the counter is not there yet.
fn pruned_of(metrics: &str, kind: &str) -> Option<u64> {
    let key = format!("sluice_pruned_total{{kind=\"{kind}\"}}");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Writes the queues file of a soak with retention: the queue the `GET`s'
/// ingestions wait in.
fn write_held_queue(path: &Path) -> anyhow::Result<()> {
    // At one start an hour even before the pause: nothing of it ends in a
    // soak.
    let text = format!("[queues.{HELD_QUEUE}]\ninterval = \"1h\"\n");
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Pauses the held queue, then creates `count` ingestions of `ids_each` ids
/// in it, over 16 connections; their `GET /status` paths.
async fn create_held_ingestions(
    addr: SocketAddr,
    count: usize,
    ids_each: usize,
) -> anyhow::Result<Arc<Vec<String>>> {
    let mut conn = Connection::open(addr).await?;
    let (status, body) = conn
        .request(Method::POST, &format!("/queues/{HELD_QUEUE}/pause"), None)
        .await?;
    ensure!(
        status == StatusCode::OK,
        "POST /queues/{HELD_QUEUE}/pause answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let started = Instant::now();
    let connections = 16.min(count.max(1));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share: Vec<usize> = (c..count).step_by(connections).collect();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut paths = Vec::with_capacity(share.len());
            for k in share {
                let ids: Vec<usize> = (0..ids_each).map(|i| 1 + k * ids_each + i).collect();
                let priority = ["HIGH", "MEDIUM", "LOW"][k % 3];
                let body = serde_json::json!({
                    "ids": ids,
                    "priority": priority,
                    "queue": HELD_QUEUE,
                });
                let id = conn.ingest(serde_json::to_vec(&body)?.into()).await?;
                paths.push(format!("/status/{id}"));
            }
            anyhow::Ok(paths)
        }));
    }
    let mut paths = Vec::with_capacity(count);
    for task in tasks {
        paths.extend(task.await.context("a creating connection panicked")??);
    }
    println!(
        "  created {} ingestions of {ids_each} ids to read in the paused queue {HELD_QUEUE}, in {}",
        thousands(count as u64),
        secs(started.elapsed())
    );
    Ok(Arc::new(paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_minutes_and_seconds() {
        assert_eq!(clock(Duration::from_secs(0)), "0:00");
        assert_eq!(clock(Duration::from_secs(75)), "1:15");
        assert_eq!(clock(Duration::from_millis(599_700)), "10:00");
    }

    #[test]
    fn flat_rule() {
        let mb = 1024 * 1024;
        assert!(rss_flat(20 * mb, 32 * mb));
        assert!(!rss_flat(20 * mb, 33 * mb));
        let mut first = new_histogram();
        let mut last = new_histogram();
        first.record(1_000).unwrap();
        last.record(2_900).unwrap();
        assert!(p99_flat(&first, &last));
        last.record(3_200).unwrap();
        last.record(3_200).unwrap();
        assert!(!p99_flat(&first, &last));
        assert!(!p99_flat(&first, &new_histogram()));
    }

    #[test]
    fn pruned_counter_reads() {
        let text = "# TYPE sluice_pruned_total counter\nsluice_pruned_total{kind=\"ingestions\"} 7\nsluice_pruned_total{kind=\"batches\"} 21\n";
        assert_eq!(pruned_of(text, "ingestions"), Some(7));
        assert_eq!(pruned_of(text, "batches"), Some(21));
        assert_eq!(pruned_of(text, "events"), None);
    }

    #[test]
    fn database_size_is_flat_within_ten_percent_of_the_mean() {
        let from = Duration::from_secs(300);
        let flat = SizeSpan::from_sizes(from, &[100, 95, 105, 108, 92]).unwrap();
        assert_eq!((flat.min, flat.max, flat.samples), (92, 108, 5));
        assert!(flat.flat());
        // A database that keeps growing: 100 → 150 is ±20% of its mean.
        let growing = SizeSpan::from_sizes(from, &[100, 110, 120, 130, 140, 150]).unwrap();
        assert!(!growing.flat());
        assert!(growing.above() > SIZE_TOLERANCE);
        // One dip below 90% of the mean is enough to miss.
        let dip = SizeSpan::from_sizes(from, &[100, 100, 100, 100, 80]).unwrap();
        assert!(dip.above() < SIZE_TOLERANCE && !dip.flat());
        assert!(SizeSpan::from_sizes(from, &[]).is_none());
    }

    #[test]
    fn the_size_span_takes_the_rows_of_the_last_five_minutes() {
        let row = |minute: u64, size: Option<u64>| Row {
            end: Duration::from_secs(minute * 60),
            length: Duration::from_secs(60),
            post: new_histogram(),
            get: new_histogram(),
            lag: new_histogram(),
            errors: 0,
            throttled: 0,
            rss: 0,
            server_cores: 0.0,
            client_cores: 0.0,
            other_cores: 0.0,
            queue: Probe::Skipped,
            size: size.map(|s| DbSize::Sqlite {
                main: s,
                wal: 1,
                shm: 7,
            }),
        };
        // Minutes 1–4 grow; from minute 5 on it holds, but minute 8 failed
        // to read.
        let rows: Vec<Row> = (1..=10)
            .map(|m| {
                let size = if m == 8 { None } else { Some(m.min(5) * 1000) };
                row(m, size)
            })
            .collect();
        let span = SizeSpan::of(&rows, Duration::from_secs(600)).unwrap();
        assert_eq!(span.from, Duration::from_secs(300));
        // 5, 6, 7, 9, 10: the WAL counts, the -shm does not.
        assert_eq!((span.samples, span.min, span.max), (5, 5001, 5001));
        assert!(span.flat());
        // A soak shorter than the span is judged whole.
        let short = SizeSpan::of(&rows[..2], Duration::from_secs(120)).unwrap();
        assert_eq!((short.from, short.samples), (Duration::ZERO, 2));
        assert!(!short.flat());
    }
}
