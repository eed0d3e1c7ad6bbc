//! Hostile clients, each run on a fresh server with its default limits: huge
//! bodies of the wrong shape, one enormous status read, and slowloris. The
//! figures are peak memory and what other clients' latency did meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use hyper::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::{Connection, with_deadline};
use crate::load::{self, Rng, ms, thousands};
use crate::report::{mib, secs};
use crate::scenarios::Bench;

const TARGET_HOSTILE_RSS: u64 = 150 * 1024 * 1024;
const TARGET_HOSTILE_HEALTHZ: Duration = Duration::from_millis(100);
const TARGET_BIG_STATUS_RSS: u64 = 64 * 1024 * 1024;
const TARGET_SLOWLORIS_P99: Duration = Duration::from_millis(10);

/// Hostile requests of each kind at once.
const HOSTILE_CLIENTS: usize = 64;
const SLOW_CONNECTIONS: usize = 1000;

impl Bench {
    /// 64 `POST /ingest` whose `priority` is a 15 MiB array and 64 `GET
    /// /status` with 16 MiB bodies, all at once, while `/healthz` is timed.
    pub async fn hostile_bodies(&mut self) -> anyhow::Result<()> {
        println!(
            "\n== Hostile bodies: {HOSTILE_CLIENTS} POST /ingest with a 15 MiB priority array, \
             {HOSTILE_CLIENTS} GET /status with 16 MiB bodies =="
        );
        let db = self.database.create("hostile")?;
        let server = self.start_server(&db, "hostile", &["--interval", "1h"])?;
        let addr = server.addr();
        let idle = server.memory()?;
        let zeros = vec!["0"; 15 * 1024 * 1024 / 2].join(",");
        let post = Bytes::from(format!(r#"{{"ids": [1], "priority": [{zeros}]}}"#));
        let get = Bytes::from(format!(
            r#"{{"ingestion_id": "x", "pad": "{}"}}"#,
            "x".repeat(16 * 1024 * 1024 - 40)
        ));
        println!(
            "  bodies: POST {}, GET {}; server idle: RSS {}",
            mib(post.len() as u64),
            mib(get.len() as u64),
            mib(idle.rss)
        );
        self.settle().await;

        let done = Arc::new(AtomicBool::new(false));
        // On a thread and runtime of its own: the hostile clients keep this
        // tool's runtime busy, and their wait must not count as the server's.
        let prober_done = Arc::clone(&done);
        let healthz = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(time_healthz(addr, prober_done))
        });
        let started = Instant::now();
        let mut clients = Vec::new();
        for i in 0..HOSTILE_CLIENTS * 2 {
            let (method, path, body) = if i % 2 == 0 {
                (Method::POST, "/ingest", post.clone())
            } else {
                (Method::GET, "/status", get.clone())
            };
            clients.push(tokio::spawn(async move {
                let mut conn = Connection::open(addr).await?;
                let (status, _) = conn.request(method, path, Some(body)).await?;
                anyhow::Ok(status.as_u16())
            }));
        }
        let (mut client_errors, mut non_4xx, mut statuses) =
            (0, 0, std::collections::BTreeMap::new());
        for client in clients {
            match with_deadline("a hostile request", Duration::from_secs(300), async {
                client.await.context("a client task")?
            })
            .await
            {
                Ok(status) => {
                    *statuses.entry(status).or_insert(0usize) += 1;
                    if !(400..500).contains(&status) {
                        non_4xx += 1;
                    }
                }
                Err(error) => {
                    client_errors += 1;
                    eprintln!("  a hostile request failed: {error:#}");
                }
            }
        }
        let took = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let (slowest, probes) = healthz
            .join()
            .map_err(|_| anyhow::anyhow!("the /healthz prober panicked"))??;
        let peak = server.memory()?.peak;
        server.stop()?;
        println!(
            "  answered in {}: {statuses:?}, {client_errors} failed, {non_4xx} not a 4xx",
            secs(took)
        );
        println!(
            "  server peak RSS (VmHWM) {}; slowest /healthz {} over {probes} probes",
            mib(peak),
            ms(slowest)
        );
        self.summary.add(
            "hostile bodies: server peak RSS",
            mib(peak),
            "≤ 150 MB",
            Some(peak <= TARGET_HOSTILE_RSS),
        );
        self.summary.add(
            "hostile bodies: answers that are 4xx",
            format!(
                "{} of {}",
                HOSTILE_CLIENTS * 2 - non_4xx - client_errors,
                HOSTILE_CLIENTS * 2
            ),
            "all",
            Some(non_4xx == 0 && client_errors == 0),
        );
        self.summary.add(
            "hostile bodies: slowest /healthz meanwhile",
            ms(slowest),
            "≤ 100 ms",
            Some(slowest <= TARGET_HOSTILE_HEALTHZ),
        );
        Ok(())
    }

    /// `GET /status` of one request of 1,000,000 ids, read by a server that
    /// has just started, so that its peak memory is the read's.
    pub async fn big_status(&mut self) -> anyhow::Result<()> {
        let n = 1_000_000;
        println!("\n== GET /status of a request of {} ids ==", thousands(n));
        let db = self.database.create("big-status")?;
        let server = self.start_server(&db, "big-status", &["--interval", "1h"])?;
        let body = load::ingest_body(&mut Rng::new(11), n as usize, Some("LOW"));
        let id = with_deadline(
            "the big POST",
            Duration::from_secs(600),
            Connection::open(server.addr()).await?.ingest(body),
        )
        .await?;
        server.stop()?;
        // A fresh process: its peak is the read's, not the POST's.
        let server = self.start_server(&db, "big-status-read", &["--interval", "1h"])?;
        self.settle().await;
        let before = server.memory()?;
        let mut conn = Connection::open(server.addr()).await?;
        let started = Instant::now();
        let (status, answer) = with_deadline(
            "the big status read",
            Duration::from_secs(600),
            conn.request(Method::GET, &format!("/status/{id}"), None),
        )
        .await?;
        let took = started.elapsed();
        ensure!(status == 200, "GET /status answered {status}");
        let parsed: serde_json::Value =
            serde_json::from_slice(&answer).context("reading the big status answer")?;
        let batches = parsed["batches"].as_array().map_or(0, Vec::len);
        let peak = server.memory()?.peak;
        server.stop()?;
        println!(
            "  {} answer, {} batches, in {}; server RSS before {}, peak (VmHWM) {}",
            mib(answer.len() as u64),
            thousands(batches as u64),
            secs(took),
            mib(before.rss),
            mib(peak)
        );
        self.summary.add(
            "GET /status of 1,000,000 ids: server peak RSS",
            mib(peak),
            "≤ 64 MB",
            Some(peak <= TARGET_BIG_STATUS_RSS),
        );
        Ok(())
    }

    /// 1,000 connections that send their headers a byte a second, while
    /// other clients time `/healthz` and `POST /ingest`.
    pub async fn slowloris(&mut self) -> anyhow::Result<()> {
        let run_for = Duration::from_secs(15);
        println!(
            "\n== Slowloris: {SLOW_CONNECTIONS} connections sending headers a byte a second, \
             for {} ==",
            secs(run_for)
        );
        let db = self.database.create("slowloris")?;
        let server = self.start_server(&db, "slowloris", &["--interval", "1h"])?;
        let addr = server.addr();
        self.settle().await;
        let (healthz_alone, ingest_alone) = time_clients(addr, Duration::from_secs(5)).await?;
        println!(
            "  alone: /healthz p99 {}, POST /ingest p99 {}",
            ms(healthz_alone),
            ms(ingest_alone)
        );

        let closed = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut slow = Vec::new();
        for _ in 0..SLOW_CONNECTIONS {
            let (closed, open, stop) = (Arc::clone(&closed), Arc::clone(&open), Arc::clone(&stop));
            slow.push(tokio::spawn(async move {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    return;
                };
                open.fetch_add(1, Ordering::Relaxed);
                let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    let mut probe = [0u8; 1];
                    let write_failed = stream.write_all(&[byte]).await.is_err();
                    // Anything readable means the server has given up on
                    // it: an end of stream, a reset, or a last answer.
                    let server_done = match stream.try_read(&mut probe) {
                        Ok(_) => true,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    let gone = write_failed || server_done;
                    if gone {
                        closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (healthz_p99, ingest_p99) = time_clients(addr, run_for).await?;
        stop.store(true, Ordering::Relaxed);
        for task in slow {
            let _ = task.await;
        }
        let (opened, closed) = (open.load(Ordering::Relaxed), closed.load(Ordering::Relaxed));
        server.stop()?;
        println!(
            "  under slowloris: /healthz p99 {}, POST /ingest p99 {}; \
             {closed} of {opened} slow connections closed by the server",
            ms(healthz_p99),
            ms(ingest_p99)
        );
        self.summary.add(
            "slowloris: /healthz p99",
            format!("{} (alone {})", ms(healthz_p99), ms(healthz_alone)),
            "≤ 10 ms",
            Some(healthz_p99 <= TARGET_SLOWLORIS_P99),
        );
        self.summary.add(
            "slowloris: POST /ingest p99",
            format!("{} (alone {})", ms(ingest_p99), ms(ingest_alone)),
            "≤ 10 ms",
            Some(ingest_p99 <= TARGET_SLOWLORIS_P99),
        );
        self.summary.add(
            "slowloris: slow connections closed by the header timeout",
            format!("{closed} of {opened}"),
            "all",
            Some(opened == SLOW_CONNECTIONS && closed == opened),
        );
        Ok(())
    }
}

/// Times `GET /healthz` every 10 ms on a connection of its own until `done`;
/// the slowest answer and how many were timed. A failed probe counts as
/// the time it took to fail, on a new connection.
async fn time_healthz(
    addr: std::net::SocketAddr,
    done: Arc<AtomicBool>,
) -> anyhow::Result<(Duration, usize)> {
    let mut conn = Connection::open(addr).await?;
    let (mut slowest, mut probes) = (Duration::ZERO, 0);
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answered = conn.request(Method::GET, "/healthz", None).await;
        slowest = slowest.max(started.elapsed());
        probes += 1;
        if answered.is_err() {
            conn = Connection::open(addr).await?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((slowest, probes))
}

/// For `run_for`, one client sends `GET /healthz` and another `POST
/// /ingest` (10 ids), each closed loop on its own kept-alive connection;
/// their p99 latencies.
async fn time_clients(
    addr: std::net::SocketAddr,
    run_for: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let until = Instant::now() + run_for;
    let healthz = tokio::spawn(async move {
        let mut conn = Connection::open(addr).await?;
        let mut times = Vec::new();
        while Instant::now() < until {
            let started = Instant::now();
            let (status, _) = conn.request(Method::GET, "/healthz", None).await?;
            ensure!(status == 200, "/healthz answered {status}");
            times.push(started.elapsed());
        }
        anyhow::Ok(times)
    });
    let ingest = tokio::spawn(async move {
        let mut conn = Connection::open(addr).await?;
        let mut rng = Rng::new(7);
        let mut times = Vec::new();
        while Instant::now() < until {
            let body = load::ingest_body(&mut rng, 10, Some("LOW"));
            let started = Instant::now();
            conn.ingest(body).await?;
            times.push(started.elapsed());
        }
        anyhow::Ok(times)
    });
    let p99 = |mut times: Vec<Duration>| {
        times.sort();
        times
            .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok((p99(healthz.await??), p99(ingest.await??)))
}
