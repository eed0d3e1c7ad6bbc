//! Issue 13's claim-cost scenario (`--scenario claim`, on request): how long
//! one claim takes when 1, 100 or 10,000 tenants have work waiting, with
//! tenant fairness and, for comparison, with `fifo`.
//!
//! It drives the store through the `sluice` library, not a server: the claim
//! is what is measured, without HTTP, the dispatcher's timers or the
//! upstream. For each tenant count N, on a fresh database: one queue, and N
//! requests (one per tenant, tenants `t0`, `t1`, …) of k MEDIUM batches of
//! one id each, k enough that every tenant still has work waiting at the end
//! (at least 3). Then `--claim-count` claims of one batch each with
//! `fairness = tenant` (no rate limit, no in-flight limit in the way), each
//! timed around `Store::claim_batches` alone, after 50 unmeasured ones; each
//! claimed batch is completed outside the timing, as the dispatcher would,
//! so the in-flight count stays at zero. Then as many with `fifo` on the same
//! data. It prints p50, p99 and the mean per claim; it judges nothing.
//!
//! SQLite always (a file in `--tmpdir`); PostgreSQL too when `--database` is
//! given (a fresh database per tenant count, as the other scenarios).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sluice::config::Config;
use sluice::domain::{BatchSize, IngestionId, Interval, ItemId, Priority, TenantName, Timestamp};
use sluice::queue::{DispatchOrder, Fairness, QueueName};
use sluice::store::{AttemptEnd, ClaimOutcome, ClaimRequest, Created, NewIngestion, SharedStore};
use tokio::task::JoinSet;

use crate::load::thousands;
use crate::report::{micros_ms, percentile, secs};
use crate::scenarios::Bench;
use crate::server::DatabaseSpec;

/// The tenant counts measured, as issue 13 asks.
pub const TENANTS: [usize; 3] = [1, 100, 10_000];
/// Unmeasured claims before each measured run.
const WARMUP_CLAIMS: usize = 50;
/// Requests being stored at once while seeding (SQLite groups them into
/// shared commits; PostgreSQL runs them side by side).
const SEED_CONCURRENCY: usize = 32;
const QUEUE: &str = "bench";

/// The scenario's sizes, from the flags.
#[derive(Debug, Clone)]
pub struct ClaimSettings {
    /// Claims timed at each tenant count, with each fairness.
    pub claims: usize,
    /// The tenant counts.
    pub tenants: Vec<usize>,
    /// Where the SQLite databases go (`--tmpdir`).
    pub sqlite_parent: PathBuf,
}

/// One run's figures: µs per claim.
#[derive(Debug, Clone)]
pub struct ClaimFigures {
    pub claims: usize,
    pub p50: i64,
    pub p99: i64,
    pub mean: f64,
}

impl ClaimFigures {
    fn of(mut micros: Vec<i64>) -> Self {
        micros.sort_unstable();
        let claims = micros.len();
        let mean = micros.iter().sum::<i64>() as f64 / claims.max(1) as f64;
        Self {
            claims,
            p50: percentile(&micros, 0.50),
            p99: percentile(&micros, 0.99),
            mean,
        }
    }

    fn describe(&self) -> String {
        format!(
            "p50 {} / p99 {} / mean {} ({} claims)",
            micros_ms(self.p50),
            micros_ms(self.p99),
            micros_ms(self.mean.round() as i64),
            thousands(self.claims as u64)
        )
    }
}

/// What one tenant count gave on one store.
#[derive(Debug, Clone)]
pub struct TenantRun {
    pub batches_per_tenant: usize,
    pub seeded_in: Duration,
    pub fair: ClaimFigures,
    pub fifo: ClaimFigures,
}

impl Bench {
    /// i. The claim's cost at 1, 100 and 10,000 tenants with work waiting.
    pub async fn claim(&mut self, settings: &ClaimSettings) -> anyhow::Result<()> {
        let claims = settings.claims;
        println!(
            "\n== i. Claim cost: {} single-batch claims with fairness `tenant`, then {} with `fifo`, at {} tenants with work waiting (through the store, no server) ==",
            thousands(claims as u64),
            thousands(claims as u64),
            settings
                .tenants
                .iter()
                .map(|n| thousands(*n as u64))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stores = vec![(
            "SQLite",
            DatabaseSpec::Sqlite {
                parent: settings.sqlite_parent.clone(),
            },
        )];
        if let DatabaseSpec::Postgres { .. } = &self.database {
            stores.push(("PostgreSQL", self.database.clone()));
        }
        for (store_name, spec) in stores {
            for &tenants in &settings.tenants {
                self.settle().await;
                let db = spec.create(&format!("claim-{tenants}"))?;
                let store = sluice::store::open(db.url(), Config::defaults().lease_settings())
                    .await
                    .with_context(|| format!("opening {store_name}"))?;
                let run = measure(&store, tenants, claims).await?;
                println!(
                    "  {store_name}, {} tenant(s) × {} batches (seeded in {}): tenant {}; fifo {}",
                    thousands(tenants as u64),
                    run.batches_per_tenant,
                    secs(run.seeded_in),
                    run.fair.describe(),
                    run.fifo.describe()
                );
                self.summary.add(
                    format!(
                        "claim, {store_name}, {} tenant(s) waiting, fairness tenant",
                        thousands(tenants as u64)
                    ),
                    run.fair.describe(),
                    "",
                    None,
                );
                self.summary.add(
                    format!(
                        "claim, {store_name}, {} tenant(s) waiting, fifo",
                        thousands(tenants as u64)
                    ),
                    run.fifo.describe(),
                    "",
                    None,
                );
                drop(store);
            }
        }
        Ok(())
    }
}

/// Seeds `tenants` tenants on `store` and times `claims` claims with each
/// fairness.
pub async fn measure(
    store: &SharedStore,
    tenants: usize,
    claims: usize,
) -> anyhow::Result<TenantRun> {
    let queue: QueueName = QUEUE.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    store.register_queues(std::slice::from_ref(&queue)).await?;
    // Both runs together take at most this many from one tenant (all of
    // them when there is one); a tenant keeps some waiting to the end.
    let per_tenant = (2 * (claims + WARMUP_CLAIMS)).div_ceil(tenants) + 2;
    let per_tenant = per_tenant.max(3);
    let started = Instant::now();
    seed(store, &queue, tenants, per_tenant).await?;
    let seeded_in = started.elapsed();
    let fair = timed_claims(store, &queue, Fairness::Tenant, claims).await?;
    let fifo = timed_claims(store, &queue, Fairness::Fifo, claims).await?;
    Ok(TenantRun {
        batches_per_tenant: per_tenant,
        seeded_in,
        fair,
        fifo,
    })
}

/// One request per tenant, `per_tenant` batches of one id each.
async fn seed(
    store: &SharedStore,
    queue: &QueueName,
    tenants: usize,
    per_tenant: usize,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for tenant in 0..tenants {
        if tasks.len() >= SEED_CONCURRENCY
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        let name = TenantName::parse(&format!("t{tenant}")).map_err(anyhow::Error::msg)?;
        let new = NewIngestion {
            id: IngestionId::generate(),
            queue: queue.clone(),
            priority: Priority::Medium,
            ids: (1..=per_tenant as u64)
                .map(|i| ItemId::new(i).context("an item id"))
                .collect::<anyhow::Result<_>>()?,
            batch_size: BatchSize::new(1).context("a batch size")?,
            created_at: now(),
            callback_url: None,
            idempotency: None,
            tenant: Some(name),
            group: None,
        };
        let store = Arc::clone(store);
        tasks.spawn(async move {
            match store.create_ingestion(new).await? {
                Created::New(_) => Ok(()),
                other => bail!("seeding: {other:?}"),
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Times `claims` claims (after the warm-up), completing each batch claimed.
async fn timed_claims(
    store: &SharedStore,
    queue: &QueueName,
    fairness: Fairness,
    claims: usize,
) -> anyhow::Result<ClaimFigures> {
    let mut micros = Vec::with_capacity(claims);
    for n in 0..WARMUP_CLAIMS + claims {
        let request = claim_request(queue, fairness);
        let started = Instant::now();
        let outcome = store.claim_batches(request).await?;
        let took = started.elapsed();
        let ClaimOutcome::Started(batches) = outcome else {
            bail!("claim {n} ({fairness:?}): expected a start, got {outcome:?}");
        };
        if n >= WARMUP_CLAIMS {
            micros.push(i64::try_from(took.as_micros()).unwrap_or(i64::MAX));
        }
        for batch in batches {
            store
                .finish_attempt(batch.key, Vec::new(), AttemptEnd::Completed, now())
                .await?;
        }
    }
    Ok(ClaimFigures::of(micros))
}

/// A dispatcher ready to start one batch now: no rate limit, no in-flight
/// limit in the way.
fn claim_request(queue: &QueueName, fairness: Fairness) -> ClaimRequest {
    let now = now();
    let no_limit = Interval::from_duration(Duration::ZERO);
    ClaimRequest {
        queue: queue.clone(),
        ready_since: Some(now),
        now,
        interval: no_limit,
        slow_down: no_limit,
        max_in_flight: NonZeroUsize::new(1_000_000).expect("not zero"),
        batches: NonZeroUsize::MIN,
        order: DispatchOrder {
            fairness,
            ..DispatchOrder::default()
        },
    }
}

fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenario's seeding and both runs, at tiny sizes on SQLite: every
    /// claim starts a batch and the figures are filled in.
    #[tokio::test]
    async fn seeds_and_claims_at_tiny_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("claim.db").display());
        let store = sluice::store::open(&url, Config::defaults().lease_settings())
            .await
            .unwrap();
        let run = measure(&store, 3, 5).await.unwrap();
        assert_eq!(run.fair.claims, 5);
        assert_eq!(run.fifo.claims, 5);
        // 2 × (5 + 50) over 3 tenants, plus 2.
        assert_eq!(run.batches_per_tenant, 39);
        assert!(run.fair.p50 > 0 && run.fair.p99 >= run.fair.p50);
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.ingestions, 3);
    }
}
