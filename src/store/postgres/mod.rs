//! The shared store: several `sluice serve` nodes on one PostgreSQL database
//! behave as one service.
//!
//! - **Claims** run `sluice_claim()` (see `migrations/postgres`), one round trip
//!   that locks the rate limiter's row, checks the rate and the in-flight limit
//!   on the database's clock, and takes the next batch with `FOR UPDATE SKIP
//!   LOCKED`. One rate for the cluster, whichever node claims.
//! - **Leases.** A claimed batch belongs to its node until `lease_expires_at`.
//!   The node renews its leases every heartbeat; any node re-queues batches
//!   whose lease ran out (their node died), and a node that stops cleanly hands
//!   its unfinished batches back at once.
//! - **Wake-ups.** New work, completions and re-queues `NOTIFY sluice_work`;
//!   every node `LISTEN`s, with a slow poll as a fallback.

mod background;
mod group;
mod prune;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use group::Grouper;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::codec::{
    self, decode_ids, decode_outcomes, earlier_outcomes, encode_ids, encode_outcomes, event,
};
use super::{
    AttemptEnd, BackgroundPart, BatchKey, BatchOutcomes, BatchRecord, CallbackDelivery,
    CallbackRecord, ClaimOutcome, ClaimRequest, ClaimedBatch, Created, DueCallback, Event,
    IngestionRecord, IngestionSummary, NewIngestion, Prune, QueueChange, QueueState, QueueStats,
    Store, StoreError,
};
use crate::domain::{
    BatchId, BatchStatus, IdOutcome, IngestionId, Interval, Priority, TenantName, Timestamp,
    stored_name,
};
use crate::queue::{Fairness, QueueName, TURN};
use crate::signals::Signals;

/// The channel on which nodes tell each other that a claim may now succeed
/// (the migrations' functions name it too).
const WAKE_CHANNEL: &str = "sluice_work";
/// The channel on which an operator's change to a queue (pause, resume, new
/// settings) reaches every node's dispatcher; the payload names the queue.
const QUEUES_CHANNEL: &str = "sluice_queues";
/// How many batches one INSERT carries when a large request is stored.
const INSERT_CHUNK: usize = 10_000;

/// How the nodes of a cluster hand work to each other.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a claim stays with its node without a heartbeat.
    pub lease: Duration,
    /// How often a node renews its leases and looks for expired ones.
    pub heartbeat: Duration,
    /// How often an idle node asks for work even without a notification.
    pub poll: Duration,
}

pub struct PostgresStore {
    pool: PgPool,
    /// One connection for the lease heartbeat alone (see
    /// `background::keep_leases`).
    heartbeat_pool: PgPool,
    /// This process, as the owner of its leases.
    node: Uuid,
    leases: LeaseSettings,
    /// The batches this process is processing: the only leases its heartbeat
    /// renews. A claim whose answer never arrived (the database went away just
    /// after committing it) is not in here, so its lease runs out and another
    /// node, or this one, runs the batch.
    processing: Processing,
    /// Attempts that ended, recorded in groups (see `finish_group`).
    finishes: Grouper<Finish, Option<bool>>,
}

/// The most attempts one group records (`sluice_finish_many`).
const FINISH_GROUP: usize = 256;

/// An attempt to record: its batch, its status code, when a retry may start,
/// the batch's outcomes so far, and when it ended.
struct Finish {
    batch: BatchKey,
    code: i32,
    retry_at: Option<i64>,
    results: String,
    at: i64,
}

/// The batches a node holds and is working on.
pub(crate) type Processing = Arc<Mutex<HashSet<BatchKey>>>;

impl PostgresStore {
    /// The most recent requests, of one tenant or of all, newest first.
    async fn recent_of(
        &self,
        tenant: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<IngestionSummary>, StoreError> {
        // Two statements rather than `$2 IS NULL OR …`, so that each has its index.
        let heads = sqlx::query(match tenant {
            None => {
                "SELECT i.seq, i.id, i.priority, i.created_at, i.finished_at, q.name, i.tenant, i.grp
                 FROM ingestions i JOIN queues q ON q.id = i.queue
                 WHERE $2::text IS NULL ORDER BY i.seq DESC LIMIT $1"
            }
            Some(_) => {
                "SELECT i.seq, i.id, i.priority, i.created_at, i.finished_at, q.name, i.tenant, i.grp
                 FROM ingestions i JOIN queues q ON q.id = i.queue
                 WHERE i.tenant = $2 ORDER BY i.seq DESC LIMIT $1"
            }
        })
        .bind(limit as i64)
        .bind(tenant.map(TenantName::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut summaries = Vec::with_capacity(heads.len());
        for head in &heads {
            let counts = sqlx::query(
                "SELECT status, count(*), (sum(length(ids)) / 4)::BIGINT FROM batches
                 WHERE ingestion_seq = $1 GROUP BY status",
            )
            .bind(head.get::<i64, _>(0))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            summaries.push(IngestionSummary {
                id: IngestionId::from_bytes(head.get::<Uuid, _>(1).into_bytes()),
                queue: codec::queue_name(head.get(5))?,
                tenant: codec::optional_name(head.get(6), "tenant")?,
                group: codec::optional_name(head.get(7), "group")?,
                priority: codec::priority(head.get::<i16, _>(2).into())?,
                created_at: Timestamp::from_micros(head.get(3)),
                finished_at: codec::time(head.get(4)),
                ids: counts.iter().map(|c| c.get::<i64, _>(2) as u64).sum(),
                batches: counts
                    .iter()
                    .map(|c| {
                        Ok((
                            codec::status(c.get::<i16, _>(0).into())?,
                            c.get::<i64, _>(1) as u64,
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            });
        }
        Ok(summaries)
    }

    /// Connects to a `postgres://` URL and applies pending migrations; several
    /// nodes may start at once (the migrator takes an advisory lock).
    pub async fn open(url: &str, leases: LeaseSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        let heartbeat_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(leases.lease)
            .connect_lazy_with(options);
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the database: {e}")))?;
        let node = Uuid::now_v7();
        let finishes = {
            let pool = pool.clone();
            Grouper::start("attempts", FINISH_GROUP, move |group| {
                finish_group(pool.clone(), node, group)
            })
        };
        Ok(Self {
            pool,
            heartbeat_pool,
            node,
            leases,
            processing: Processing::default(),
            finishes,
        })
    }
}

/// Records a group of ended attempts in one statement and one commit
/// (`sluice_finish_many`). Should the database refuse the group for what one
/// attempt holds, each is recorded alone, so that only that one fails.
async fn finish_group(
    pool: PgPool,
    node: Uuid,
    group: Vec<Finish>,
) -> Vec<Result<Option<bool>, StoreError>> {
    let column = |f: fn(&Finish) -> i64| group.iter().map(f).collect::<Vec<_>>();
    let written = sqlx::query("SELECT ended FROM sluice_finish_many($1, $2, $3, $4, $5, $6, $7)")
        .bind(node)
        .bind(column(|f| f.batch.ingestion_seq))
        .bind(
            group
                .iter()
                .map(|f| f.batch.position as i32)
                .collect::<Vec<_>>(),
        )
        .bind(group.iter().map(|f| f.code).collect::<Vec<_>>())
        .bind(group.iter().map(|f| f.retry_at).collect::<Vec<_>>())
        .bind(group.iter().map(|f| f.results.as_str()).collect::<Vec<_>>())
        .bind(column(|f| f.at))
        .fetch_all(&pool)
        .await;
    match written {
        Ok(rows) if rows.len() == group.len() => rows
            .iter()
            .map(|row| Ok(row.get::<Option<bool>, _>(0)))
            .collect(),
        Ok(rows) => {
            let e = corrupt(format!(
                "{} answers for {} attempts",
                rows.len(),
                group.len()
            ));
            group.iter().map(|_| Err(e.clone())).collect()
        }
        Err(e) if group.len() > 1 && e.as_database_error().is_some() => {
            tracing::warn!(error = %e, attempts = group.len(), "a group of attempts was refused: recording them one by one");
            let mut answers = Vec::with_capacity(group.len());
            for finish in &group {
                answers.push(finish_one(&pool, node, finish).await);
            }
            answers
        }
        Err(e) => {
            let e = refused_or_unavailable(e);
            group.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// Records one ended attempt in a commit of its own (`sluice_finish`).
async fn finish_one(pool: &PgPool, node: Uuid, f: &Finish) -> Result<Option<bool>, StoreError> {
    Ok(
        sqlx::query("SELECT sluice_finish($1, $2, $3, $4, $5, $6, $7)")
            .bind(node)
            .bind(f.batch.ingestion_seq)
            .bind(f.batch.position as i32)
            .bind(f.code)
            .bind(f.retry_at)
            .bind(f.results.as_str())
            .bind(f.at)
            .fetch_one(pool)
            .await
            .map_err(refused_or_unavailable)?
            .get(0),
    )
}

/// Puts back in the queue every batch whose lease has run out; wakes every
/// node if there were any.
async fn requeue_expired(pool: &PgPool) -> Result<u64, StoreError> {
    // `sluice_requeue(NULL)`: every node's batches whose lease ran out. A
    // node's own batches are handed back per queue (`sluice_release`).
    let n: i32 = sqlx::query("SELECT sluice_requeue(NULL)")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?
        .get(0);
    Ok(n as u64)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_ingestion(&self, new: NewIngestion) -> Result<Created, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if let Some(key) = &new.idempotency {
            // Concurrent requests with one key queue here, one at a time.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(&key.key)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let existing = sqlx::query(
                "SELECT fingerprint, ingestion_id FROM idempotency_keys
                 WHERE key = $1 AND expires_at > $2",
            )
            .bind(&key.key)
            .bind(new.created_at.as_micros())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let Some(row) = existing {
                let fingerprint: Vec<u8> = row.get(0);
                let id: Uuid = row.get(1);
                return Ok(if fingerprint == key.fingerprint {
                    Created::Replayed(IngestionId::from_bytes(id.into_bytes()))
                } else {
                    Created::KeyConflict
                });
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (key, fingerprint, ingestion_id, expires_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
                     ingestion_id = excluded.ingestion_id, expires_at = excluded.expires_at",
            )
            .bind(&key.key)
            .bind(key.fingerprint.as_slice())
            .bind(uuid(new.id))
            .bind(key.expires_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }

        let batches: Vec<Vec<u8>> = new.batches().map(encode_ids).collect();
        let (tenant, group) = (
            stored_name(new.tenant.as_ref()),
            stored_name(new.group.as_ref()),
        );
        // The turns' rows before the request's own: see 0005's locking rules.
        let (queue, flow): (i32, i64) = sqlx::query(
            "SELECT q.id, sluice_join_flow(q.id, $2, $3, $4, $5) FROM queues q WHERE q.name = $1",
        )
        .bind(new.queue.as_str())
        .bind(new.priority.rank() as i16)
        .bind(tenant)
        .bind(group)
        .bind(batches.len() as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .map(|row| (row.get(0), row.get(1)))
        .ok_or_else(|| StoreError::Corrupt(format!("the store has no queue {}", new.queue)))?;
        let seq: i64 = sqlx::query(
            "INSERT INTO ingestions (id, priority, created_at, open_batches, callback_url,
                                     callback_state, queue, tenant, grp)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING seq",
        )
        .bind(uuid(new.id))
        .bind(new.priority.rank() as i16)
        .bind(new.created_at.as_micros())
        .bind(batches.len() as i32)
        .bind(&new.callback_url)
        .bind(new.callback_url.as_ref().map(|_| 0i16))
        .bind(queue)
        .bind(tenant)
        .bind(group)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?
        .get(0);

        for (chunk_index, chunk) in batches.chunks(INSERT_CHUNK).enumerate() {
            let first = (chunk_index * INSERT_CHUNK) as i32;
            sqlx::query(
                "INSERT INTO batches (ingestion_seq, position, priority, ids, queue, flow)
                 SELECT $1, $2 + ord - 1, $3, ids, $5, $6
                 FROM unnest($4::bytea[]) WITH ORDINALITY AS t (ids, ord)",
            )
            .bind(seq)
            .bind(first)
            .bind(new.priority.rank() as i16)
            .bind(chunk)
            .bind(queue)
            .bind(flow)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        // The event lock last, after every row: see the migration's locking rules.
        sqlx::query("SELECT sluice_event($1, NULL, 0, $2)")
            .bind(seq)
            .bind(new.created_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        notify(&mut *tx).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Created::New(new.id))
    }

    async fn ingestion(&self, id: IngestionId) -> Result<Option<IngestionRecord>, StoreError> {
        // Every batch: a page without end.
        self.ingestion_page(id, None, usize::MAX).await
    }

    async fn ingestion_page(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<IngestionRecord>, StoreError> {
        // One statement, so one snapshot (never a request half-way through a
        // commit) and one round trip: the request's columns repeat on each of
        // its batches' rows, and come alone, with NULL batch columns, when the
        // page holds no batch.
        let rows = sqlx::query(
            "SELECT i.seq, i.priority, i.created_at, i.finished_at, i.callback_url,
                    i.callback_state, i.callback_attempts, i.callback_error, q.name,
                    i.tenant, i.grp,
                    b.position, b.status, b.attempts, b.ids, b.retry_at, b.scheduled_at,
                    b.started_at, b.completed_at
             FROM ingestions i JOIN queues q ON q.id = i.queue
             LEFT JOIN LATERAL
                 (SELECT position, status, attempts, ids, retry_at, scheduled_at, started_at,
                         completed_at
                  FROM batches WHERE ingestion_seq = i.seq AND position > $2
                  ORDER BY position LIMIT $3) b ON TRUE
             WHERE i.id = $1
             ORDER BY b.position",
        )
        .bind(uuid(id))
        .bind(after.map_or(-1, i64::from))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(head) = rows.first() else {
            return Ok(None);
        };
        let batches = rows
            .iter()
            .filter_map(|row| {
                let position: Option<i32> = row.get(11);
                position.map(|position| {
                    Ok(BatchRecord {
                        id: BatchId {
                            ingestion: id,
                            position: position as u32,
                        },
                        status: codec::status(row.get::<i16, _>(12).into())?,
                        attempts: row.get::<i32, _>(13) as u32,
                        ids: decode_ids(row.get(14))?,
                        retry_at: codec::time(row.get(15)),
                        scheduled_at: codec::time(row.get(16)),
                        started_at: codec::time(row.get(17)),
                        completed_at: codec::time(row.get(18)),
                    })
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let callback = head
            .get::<Option<String>, _>(4)
            .map(|url| {
                Ok::<_, StoreError>(CallbackRecord {
                    url,
                    state: codec::callback_state(head.get::<Option<i16>, _>(5).map(i64::from))?,
                    attempts: head.get::<i32, _>(6) as u32,
                    last_error: head.get(7),
                })
            })
            .transpose()?;
        Ok(Some(IngestionRecord {
            id,
            queue: codec::queue_name(head.get(8))?,
            tenant: codec::optional_name(head.get(9), "tenant")?,
            group: codec::optional_name(head.get(10), "group")?,
            priority: codec::priority(head.get::<i16, _>(1).into())?,
            created_at: Timestamp::from_micros(head.get(2)),
            finished_at: codec::time(head.get(3)),
            callback,
            batches,
        }))
    }

    async fn claim_batches(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let (weight_tenants, weight_strides) = request.order.strides();
        let rows = sqlx::query(
            "SELECT * FROM sluice_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
            .bind(self.node)
            .bind(request.queue.as_str())
            .bind(request.ready_since.map(Timestamp::as_micros))
            .bind(request.now.as_micros())
            .bind(request.interval.as_micros())
            .bind(request.slow_down.as_micros())
            .bind(i32::try_from(request.max_in_flight.get()).unwrap_or(i32::MAX))
            .bind(micros(self.leases.lease))
            .bind(i32::try_from(request.batches.get()).unwrap_or(i32::MAX))
            .bind(request.order.fairness == Fairness::Tenant)
            .bind(request.order.aging_micros())
            .bind(TURN)
            .bind(weight_tenants)
            .bind(weight_strides)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let Some(first) = rows.first() else {
            return Err(StoreError::Corrupt("a claim without an outcome".into()));
        };
        Ok(match first.get::<&str, _>("outcome") {
            "not_before" => {
                ClaimOutcome::NotBefore(Timestamp::from_micros(first.get("not_before")))
            }
            "busy" => ClaimOutcome::Busy,
            "idle" => ClaimOutcome::Idle,
            "paused" => ClaimOutcome::Paused,
            "started" => {
                let batches: Vec<ClaimedBatch> =
                    rows.iter()
                        .map(claimed_batch)
                        .collect::<Result<_, StoreError>>()?;
                self.processing
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend(batches.iter().map(|b| b.key));
                ClaimOutcome::Started(batches)
            }
            other => return Err(StoreError::Corrupt(format!("claim outcome {other:?}"))),
        })
    }

    async fn finish_attempt(
        &self,
        batch: BatchKey,
        outcomes: Vec<IdOutcome>,
        end: AttemptEnd,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let (code, retry_at) = match end {
            AttemptEnd::Completed => (BatchStatus::Completed.code(), None),
            AttemptEnd::Failed => (BatchStatus::Failed.code(), None),
            AttemptEnd::RetryAt(when) => (BatchStatus::Retrying.code(), Some(when.as_micros())),
        };
        let finish = Finish {
            batch,
            code: code as i32,
            retry_at,
            results: encode_outcomes(&outcomes)?,
            at: at.as_micros(),
        };
        // Only the lease holder records an attempt: a node whose lease ran out
        // while it worked must not overwrite the run that rescued its batch.
        let ended = self.finishes.submit(finish).await?;
        self.processing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&batch);
        match ended {
            Some(ended) => Ok(ended),
            None => {
                tracing::warn!(
                    ?batch,
                    "lease lost before the attempt was recorded; another node re-ran the batch"
                );
                Ok(false)
            }
        }
    }

    async fn cancel_ingestion(
        &self,
        id: IngestionId,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let cancelled: Option<i32> = sqlx::query("SELECT sluice_cancel($1, $2)")
            .bind(uuid(id))
            .bind(at.as_micros())
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        Ok(cancelled.map(|n| n as u64))
    }

    async fn batch_outcomes(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<Vec<BatchOutcomes>>, StoreError> {
        // One statement and one round trip, as for `ingestion_page`: a row
        // with NULL batch columns says the request exists but the page is empty.
        let rows = sqlx::query(
            "SELECT b.position, b.status, b.ids, b.results
             FROM ingestions i
             LEFT JOIN LATERAL
                 (SELECT position, status, ids, results FROM batches
                  WHERE ingestion_seq = i.seq AND position > $2
                  ORDER BY position LIMIT $3) b ON TRUE
             WHERE i.id = $1
             ORDER BY b.position",
        )
        .bind(uuid(id))
        .bind(after.map_or(-1, |p| p as i32))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .filter(|row| row.get::<Option<i32>, _>(0).is_some())
            .map(|row| {
                let outcomes: Option<&str> = row.try_get(3).map_err(corrupt)?;
                Ok(BatchOutcomes {
                    id: BatchId {
                        ingestion: id,
                        position: row.get::<i32, _>(0) as u32,
                    },
                    status: codec::status(row.get::<i16, _>(1).into())?,
                    ids: decode_ids(row.get(2))?,
                    outcomes: decode_outcomes(outcomes)?,
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn requeue_interrupted(&self, _at: Timestamp) -> Result<u64, StoreError> {
        requeue_expired(&self.pool).await
    }

    async fn release_unfinished(
        &self,
        queue: &QueueName,
        _at: Timestamp,
    ) -> Result<u64, StoreError> {
        let n: i32 = sqlx::query("SELECT sluice_release($1, $2)")
            .bind(self.node)
            .bind(queue.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        Ok(n as u64)
    }

    async fn events_after(
        &self,
        after: u64,
        ingestion: Option<IngestionId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.seq, i.id, e.position, e.status, e.at FROM events e
             JOIN ingestions i ON i.seq = e.ingestion_seq
             WHERE ($1::uuid IS NULL OR i.id = $1) AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        )
        .bind(ingestion.map(uuid))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_of_row).collect()
    }

    async fn tenant_events_after(
        &self,
        after: u64,
        tenant: &TenantName,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.seq, i.id, e.position, e.status, e.at FROM events e
             JOIN ingestions i ON i.seq = e.ingestion_seq
             WHERE i.tenant = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_of_row).collect()
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = sqlx::query("SELECT max(seq) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        Ok(seq.unwrap_or(0) as u64)
    }

    async fn oldest_event(&self) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> = sqlx::query("SELECT min(seq) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        Ok(seq.map(|seq| seq as u64))
    }

    async fn recent_ingestions(&self, limit: usize) -> Result<Vec<IngestionSummary>, StoreError> {
        self.recent_of(None, limit).await
    }

    async fn tenant_ingestions(
        &self,
        tenant: &TenantName,
        limit: usize,
    ) -> Result<Vec<IngestionSummary>, StoreError> {
        self.recent_of(Some(tenant), limit).await
    }

    async fn waiting_batches(&self) -> Result<Vec<(QueueName, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT q.name, count(*) FROM batches b JOIN queues q ON q.id = b.queue
             WHERE b.status IN (0, 3) GROUP BY q.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| Ok((codec::queue_name(row.get(0))?, row.get::<i64, _>(1) as u64)))
            .collect()
    }

    async fn register_queues(&self, names: &[QueueName]) -> Result<(), StoreError> {
        let names: Vec<&str> = names.iter().map(QueueName::as_str).collect();
        // Several nodes may start at once: one at a time here, so ids stay unique.
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("LOCK TABLE queues IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO queues (id, name)
             SELECT (SELECT coalesce(max(id), 0) FROM queues) + ord, name
             FROM unnest($1::text[]) WITH ORDINALITY AS t (name, ord)
             WHERE NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = t.name)",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn queue_state(&self, name: &QueueName) -> Result<Option<QueueState>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, paused, interval_us, max_in_flight, last_slot FROM queues WHERE name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let runtime = codec::queue_runtime(
            row.get(1),
            row.get(2),
            row.get::<Option<i32>, _>(3).map(i64::from),
            row.get(4),
        );
        let counts = sqlx::query(
            "SELECT priority, status, count(*) FROM batches WHERE queue = $1
             GROUP BY priority, status",
        )
        .bind(row.get::<i32, _>(0))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(Some(QueueState {
            runtime,
            batches: batch_counts(&counts)?,
        }))
    }

    async fn change_queue(
        &self,
        name: &QueueName,
        change: QueueChange,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // The queue's row is the first lock, as in a claim.
        let changed = sqlx::query(
            "UPDATE queues SET
                 paused = coalesce($2, paused),
                 interval_us = CASE WHEN $3 THEN $4 ELSE interval_us END,
                 max_in_flight = CASE WHEN $5 THEN $6 ELSE max_in_flight END
             WHERE name = $1",
        )
        .bind(name.as_str())
        .bind(change.paused)
        .bind(change.interval.is_some())
        .bind(change.interval.flatten().map(Interval::as_micros))
        .bind(change.max_in_flight.is_some())
        .bind(
            change
                .max_in_flight
                .flatten()
                .map(|n| i32::try_from(n.get()).unwrap_or(i32::MAX)),
        )
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected()
            > 0;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(QUEUES_CHANNEL)
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(changed)
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        let applied: i64 = sqlx::query("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        let known = sqlx::migrate!("./migrations/postgres").migrations.len() as i64;
        if applied == known {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "{applied} of {known} migrations applied"
            )))
        }
    }

    async fn claim_due_callbacks(
        &self,
        now: Timestamp,
        hold: Duration,
        limit: usize,
    ) -> Result<Vec<DueCallback>, StoreError> {
        let rows = sqlx::query(
            "UPDATE ingestions SET callback_due_at = $1
             WHERE seq IN (SELECT seq FROM ingestions
                           WHERE callback_state = 0 AND callback_due_at <= $2
                           ORDER BY callback_due_at LIMIT $3
                           FOR UPDATE SKIP LOCKED)
             RETURNING id, callback_url, callback_attempts",
        )
        .bind(now.saturating_add_micros(micros(hold)).as_micros())
        .bind(now.as_micros())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| DueCallback {
                ingestion: IngestionId::from_bytes(row.get::<Uuid, _>(0).into_bytes()),
                url: row.get(1),
                attempts: row.get::<i32, _>(2) as u32,
            })
            .collect())
    }

    async fn finish_callback(
        &self,
        ingestion: IngestionId,
        delivery: CallbackDelivery,
    ) -> Result<(), StoreError> {
        let (state, due, error) = match &delivery {
            CallbackDelivery::Delivered => (1i16, None, None),
            CallbackDelivery::RetryAt(at, error) => (0, Some(at.as_micros()), Some(error)),
            CallbackDelivery::GaveUp(error) => (2, None, Some(error)),
        };
        sqlx::query(
            "UPDATE ingestions
             SET callback_state = $1, callback_due_at = $2, callback_error = $3,
                 callback_attempts = callback_attempts + 1
             WHERE id = $4",
        )
        .bind(state)
        .bind(due)
        .bind(error)
        .bind(uuid(ingestion))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn next_callback_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let due: Option<i64> =
            sqlx::query("SELECT min(callback_due_at) FROM ingestions WHERE callback_state = 0")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?
                .get(0);
        Ok(codec::time(due))
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let ingestions: i64 = sqlx::query("SELECT count(*) FROM ingestions")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        let rows =
            sqlx::query("SELECT priority, status, count(*) FROM batches GROUP BY priority, status")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        let batches = batch_counts(&rows)?;
        let last_slot: Option<i64> = sqlx::query("SELECT last_slot FROM queues WHERE id = 0")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        let running = sqlx::query(
            "SELECT i.id, b.position, b.started_at FROM batches b
             JOIN ingestions i ON i.seq = b.ingestion_seq
             WHERE b.status = 1 ORDER BY b.started_at LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| {
            (
                BatchId {
                    ingestion: IngestionId::from_bytes(row.get::<Uuid, _>(0).into_bytes()),
                    position: row.get::<i32, _>(1) as u32,
                },
                Timestamp::from_micros(row.get::<Option<i64>, _>(2).unwrap_or_default()),
            )
        })
        .collect();
        let oldest_ingestion_at: Option<i64> =
            sqlx::query_scalar("SELECT created_at FROM ingestions ORDER BY seq LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        let last_prune_at: Option<i64> =
            sqlx::query_scalar("SELECT last_pass_at FROM pruning WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(QueueStats {
            ingestions: ingestions as u64,
            batches,
            last_slot: codec::time(last_slot),
            running,
            oldest_ingestion_at: codec::time(oldest_ingestion_at),
            last_prune_at: codec::time(last_prune_at),
        })
    }

    fn pruning(&self) -> Option<Arc<dyn Prune>> {
        Some(Arc::new(prune::PostgresPrune::new(self.pool.clone())))
    }

    fn background(&self, signals: Signals, shutdown: CancellationToken) -> Vec<BackgroundPart> {
        let listener = {
            let (pool, poll, signals, shutdown) = (
                self.pool.clone(),
                self.leases.poll,
                signals.clone(),
                shutdown.clone(),
            );
            BackgroundPart {
                name: "postgres listener",
                run: Box::new(move || {
                    Box::pin(background::listen(
                        pool.clone(),
                        poll,
                        signals.clone(),
                        shutdown.clone(),
                    ))
                }),
            }
        };
        let heartbeat = {
            let (pool, node, leases, processing) = (
                self.heartbeat_pool.clone(),
                self.node,
                self.leases,
                Arc::clone(&self.processing),
            );
            BackgroundPart {
                name: "lease heartbeat",
                run: Box::new(move || {
                    Box::pin(background::keep_leases(
                        pool.clone(),
                        node,
                        leases,
                        Arc::clone(&processing),
                        signals.clone(),
                        shutdown.clone(),
                    ))
                }),
            }
        };
        vec![listener, heartbeat]
    }
}

/// A `started` row of `sluice_claim`.
fn claimed_batch(row: &sqlx::postgres::PgRow) -> Result<ClaimedBatch, StoreError> {
    let outcome: &str = row.get("outcome");
    if outcome != "started" {
        return Err(StoreError::Corrupt(format!(
            "claim outcome {outcome:?} after a start"
        )));
    }
    let ingestion_seq: i64 = row.get("ingestion_seq");
    let position = row.get::<i32, _>("batch_position") as u32;
    let ingestion: Uuid = row.get("ingestion_id");
    let id = BatchId {
        ingestion: IngestionId::from_bytes(ingestion.into_bytes()),
        position,
    };
    // Read without a panic whatever the column holds: this runs in the
    // dispatcher, for a batch that is already started.
    let outcomes = match row.try_get::<Option<&str>, _>("results") {
        Ok(results) => earlier_outcomes(results, id),
        Err(error) => {
            tracing::error!(batch = %id, %error, "cannot read the earlier outcomes; fetching every id again");
            Vec::new()
        }
    };
    Ok(ClaimedBatch {
        key: BatchKey {
            ingestion_seq,
            position,
        },
        id,
        priority: codec::priority(row.get::<i16, _>("priority").into())?,
        ids: decode_ids(row.get("ids"))?,
        attempt: row.get::<i32, _>("attempts") as u32,
        slot: Timestamp::from_micros(row.get("slot")),
        outcomes,
    })
}

async fn notify<'e>(
    executor: impl Executor<'e, Database = sqlx::Postgres>,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(executor)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// An event from a row of `seq, ingestion id, position, status, at`.
fn event_of_row(row: &sqlx::postgres::PgRow) -> Result<Event, StoreError> {
    let position: Option<i32> = row.get(2);
    event(
        row.get(0),
        IngestionId::from_bytes(row.get::<Uuid, _>(1).into_bytes()),
        position.map(|p| p as u32),
        row.get::<i16, _>(3).into(),
        row.get(4),
    )
}

fn uuid(id: IngestionId) -> Uuid {
    Uuid::from_bytes(*id.as_bytes())
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A write that PostgreSQL refused for its content: a data exception (class
/// 22, e.g. a character it cannot store) or a limit exceeded (class 54, e.g. a
/// value over 1 GB). Anything else means the store is not answering.
fn refused_or_unavailable(e: sqlx::Error) -> StoreError {
    let refused = e
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("54"));
    if refused {
        StoreError::Rejected(e.to_string())
    } else {
        unavailable(e)
    }
}

/// `(priority, status, count)` rows.
fn batch_counts(
    rows: &[sqlx::postgres::PgRow],
) -> Result<Vec<(Priority, BatchStatus, u64)>, StoreError> {
    rows.iter()
        .map(|row| {
            codec::batch_count(
                row.get::<i16, _>(0).into(),
                row.get::<i16, _>(1).into(),
                row.get(2),
            )
        })
        .collect()
}
