//! Issue 11's pruning scenario: `POST /ingest` p99 while the pruner deletes a
//! long history of ended batches, against its p99 on the same database with
//! nothing to prune.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::http::{Connection, with_deadline};
use crate::load::{self, Rng, ms, thousands};
use crate::report::secs;
use crate::scenarios::{BATCH_SIZE, Bench, queue_bodies};
use crate::server::Server;

/// Ids in each seeding request: three batches of `BATCH_SIZE`, so that a
/// pruning chunk (100 requests) deletes 300 batches.
const SEED_IDS: usize = 3 * BATCH_SIZE;
/// Connections that send the seeding requests.
const SEED_CONNECTIONS: usize = 16;
/// p99 while pruning may be at most this many times the p99 without.
const TARGET_RATIO: f64 = 2.0;

impl Bench {
    /// g. `POST /ingest` while 1,000,000 ended batches are pruned.
    pub async fn prune(&mut self) -> anyhow::Result<()> {
        let target = self.settings.prune_batches;
        let batches_each = SEED_IDS.div_ceil(BATCH_SIZE);
        let requests = target.div_ceil(batches_each);
        let seeded = requests * batches_each;
        let duration = self.settings.prune_duration;
        let in_flight = self.settings.dispatch_in_flight.to_string();
        println!(
            "\n== g. POST /ingest while {} ended batches are pruned ({} requests of {SEED_IDS} ids), {} per phase ==",
            thousands(seeded as u64),
            thousands(requests as u64),
            secs(duration)
        );
        let db = self.database.create("prune")?;

        // 1. Seed: queue the requests to an unthrottled dispatcher that keeps
        //    everything, and wait until every batch has ended.
        let mut server = self.start_server(
            &db,
            "prune-seed",
            &[
                "--interval",
                "0",
                "--mock-latency",
                "0ms",
                "--max-in-flight",
                &in_flight,
                "--retention",
                "0",
            ],
        )?;
        let started = Instant::now();
        let mut rng = Rng::new(23);
        let bodies: Vec<Bytes> = (0..4096)
            .map(|_| load::ingest_body(&mut rng, SEED_IDS, Some("MEDIUM")))
            .collect();
        queue_bodies(&server, &bodies, requests, SEED_CONNECTIONS).await?;
        let queued = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let open = open_batches(&server).await?;
            if open == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{open} seeded batches had not ended after 10 minutes");
            }
            server.check_alive()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        println!(
            "  seeded {} requests ({} batches) in {}, all ended after {}",
            thousands(requests as u64),
            thousands(seeded as u64),
            secs(queued),
            secs(started.elapsed())
        );
        server.stop()?;

        // 2. Without pruning: the same database, retention 0. The dispatcher is
        //    held back in both phases, so that only the pruner differs.
        println!("  -- without pruning (--retention 0)");
        let server =
            self.start_server(&db, "prune-keep", &["--interval", "1h", "--retention", "0"])?;
        let keep = self
            .measure(&server, self.ingest_workload(31), duration)
            .await?;
        keep.print();
        ensure!(
            pruned_batches(&server).await? == 0,
            "batches were pruned with --retention 0"
        );
        server.stop()?;

        // 3. While pruning: restarted with a short retention, the pruner's
        //    first pass starts at once. The batches POSTed meanwhile are not
        //    dispatched (--interval 1h), so they have not ended and stay.
        println!("  -- while pruning (--retention 1s --retention-period 1s)");
        let mut server = self.start_server(
            &db,
            "prune-run",
            &[
                "--interval",
                "1h",
                "--retention",
                "1s",
                "--retention-period",
                "1s",
            ],
        )?;
        let ready = Instant::now();
        let before = pruned_batches(&server).await?;
        let run = self
            .measure(&server, self.ingest_workload(32), duration)
            .await?;
        let after = pruned_batches(&server).await?;
        let at_end = ready.elapsed();
        run.print();
        let during = after.saturating_sub(before);
        println!(
            "  batches pruned during the load run ({} warm-up + {} measured): {} ({} before it began, {} of {} when it ended, {} after the server was ready)",
            secs(self.settings.warmup),
            secs(run.window),
            thousands(during),
            thousands(before),
            thousands(after),
            thousands(seeded as u64),
            secs(at_end)
        );
        if after >= seeded as u64 {
            println!(
                "    warning: the prune ended within the run, so part of the measured window had nothing to prune; raise --prune-batches or lower --prune-duration"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut last = after;
        while last < seeded as u64 {
            if Instant::now() > deadline {
                bail!(
                    "{} of {} batches pruned after 15 minutes",
                    thousands(last),
                    thousands(seeded as u64)
                );
            }
            server.check_alive()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            last = pruned_batches(&server).await?;
        }
        let full = ready.elapsed();
        println!(
            "  the whole prune: {} batches in {} from the server being ready ({} batches/s)",
            thousands(last),
            secs(full),
            thousands((last as f64 / full.as_secs_f64()) as u64)
        );
        server.stop()?;

        let (p99_keep, p99_run) = (keep.p(0.99), run.p(0.99));
        let ratio = p99_run.as_secs_f64() / p99_keep.as_secs_f64().max(1e-6);
        println!(
            "  POST /ingest p50 {} → {}, p99 {} → {} while pruning: {ratio:.2}×",
            ms(keep.p(0.5)),
            ms(run.p(0.5)),
            ms(p99_keep),
            ms(p99_run)
        );
        self.summary.add(
            format!(
                "POST /ingest p99 while pruning {} batches vs not",
                thousands(seeded as u64)
            ),
            format!(
                "{ratio:.2}× ({} vs {}; p50 {} vs {}; {} pruned in the run)",
                ms(p99_run),
                ms(p99_keep),
                ms(run.p(0.5)),
                ms(keep.p(0.5)),
                thousands(during)
            ),
            "≤ 2×",
            Some(ratio <= TARGET_RATIO && run.errors == 0 && keep.errors == 0),
        );
        self.summary.add(
            format!("the whole prune of {} batches", thousands(seeded as u64)),
            format!(
                "{} ({} batches/s)",
                secs(full),
                thousands((last as f64 / full.as_secs_f64()) as u64)
            ),
            "",
            None,
        );
        Ok(())
    }
}

/// One `GET` over a connection of its own; the body, if it answered 200.
async fn get(server: &Server, path: &str) -> anyhow::Result<Bytes> {
    let mut conn = Connection::open(server.addr()).await?;
    let (status, body) = with_deadline(
        path,
        Duration::from_secs(60),
        conn.request(Method::GET, path, None),
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "GET {path} answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    Ok(body)
}

/// Batches that have not ended, from `GET /stats`.
async fn open_batches(server: &Server) -> anyhow::Result<u64> {
    let body = get(server, "/stats").await?;
    let stats: serde_json::Value =
        serde_json::from_slice(&body).context("reading the GET /stats answer")?;
    let queue = stats
        .get("queue")
        .and_then(serde_json::Value::as_object)
        .context("no queue in the GET /stats answer")?;
    Ok(queue
        .values()
        .filter_map(serde_json::Value::as_object)
        .flat_map(|by_status| by_status.iter())
        .filter(|(status, _)| !matches!(status.as_str(), "completed" | "failed" | "cancelled"))
        .filter_map(|(_, count)| count.as_u64())
        .sum())
}

/// `sluice_pruned_total{kind="batches"}` from `GET /metrics` (0 before the
/// first prune).
async fn pruned_batches(server: &Server) -> anyhow::Result<u64> {
    let body = get(server, "/metrics").await?;
    Ok(pruned_of(&String::from_utf8_lossy(&body), "batches"))
}

fn pruned_of(metrics: &str, kind: &str) -> u64 {
    let key = format!("sluice_pruned_total{{kind=\"{kind}\"}}");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruned_counter_reads() {
        let text = "# TYPE sluice_pruned counter\nsluice_pruned_total{kind=\"ingestions\"} 7\nsluice_pruned_total{kind=\"batches\"} 21\n";
        assert_eq!(pruned_of(text, "batches"), 21);
        assert_eq!(pruned_of(text, "ingestions"), 7);
        assert_eq!(pruned_of(text, "events"), 0);
    }
}
