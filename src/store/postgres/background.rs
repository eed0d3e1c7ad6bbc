//! A node's background duties on PostgreSQL, two parts supervised apart: the
//! listener (wake-ups from other nodes, and a slow poll in case a notification
//! was missed: one sent while the listener reconnects is lost), and the lease
//! heartbeat (renew this node's leases, rescue the batches of dead nodes).

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::signals::Signals;

use super::{LeaseSettings, Processing, QUEUES_CHANNEL, WAKE_CHANNEL, micros, requeue_expired};

/// Listens for other nodes' notifications, and polls slowly in case one was
/// missed. Returns only at shutdown.
pub async fn listen(
    pool: PgPool,
    poll_every: Duration,
    signals: Signals,
    shutdown: CancellationToken,
) {
    let mut listener = connect_listener(&pool, &shutdown).await;
    let mut poll = tokio::time::interval(poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = poll.tick() => {
                signals.work_available();
                signals.queues_changed();
                signals.events_stored();
            }
            notification = recv(&mut listener) => match notification {
                Ok(channel) if channel == QUEUES_CHANNEL => signals.queues_changed(),
                Ok(_) => {
                    signals.work_available();
                    signals.events_stored();
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the LISTEN connection; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    listener = connect_listener(&pool, &shutdown).await;
                    // Whatever was notified meanwhile is lost: look now.
                    signals.work_available();
                    signals.queues_changed();
                }
            },
        }
    }
}

/// Renews this node's leases and rescues those of dead nodes, every
/// heartbeat, on `heartbeat_pool`: a connection of its own, so that no load
/// on the pool serving reads and writes can delay a renewal past the lease.
/// Returns only at shutdown.
pub async fn keep_leases(
    heartbeat_pool: PgPool,
    node: Uuid,
    leases: LeaseSettings,
    processing: Processing,
    signals: Signals,
    shutdown: CancellationToken,
) {
    let mut heartbeat = tokio::time::interval(leases.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = heartbeat.tick() => {
                if let Err(error) = renew_and_rescue(&heartbeat_pool, node, leases.lease, &processing, &signals).await {
                    tracing::warn!(%error, "lease heartbeat failed");
                }
            }
        }
    }
}

/// The channel of the next notification.
async fn recv(listener: &mut Option<PgListener>) -> Result<String, sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|n| n.channel().to_owned()),
        None => std::future::pending().await,
    }
}

async fn connect_listener(pool: &PgPool, shutdown: &CancellationToken) -> Option<PgListener> {
    loop {
        let attempt = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen_all([WAKE_CHANNEL, QUEUES_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match attempt.await {
            Ok(listener) => return Some(listener),
            Err(error) => tracing::warn!(%error, "cannot LISTEN for work; polling until it can"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn renew_and_rescue(
    pool: &PgPool,
    node: Uuid,
    lease: Duration,
    processing: &Processing,
    signals: &Signals,
) -> Result<(), crate::store::StoreError> {
    let (seqs, positions): (Vec<i64>, Vec<i32>) = processing
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|key| (key.ingestion_seq, key.position as i32))
        .unzip();
    if !seqs.is_empty() {
        sqlx::query(
            "UPDATE batches SET lease_expires_at = sluice_now_us() + $2
             WHERE status = 1 AND lease_owner = $1
               AND (ingestion_seq, position) IN (SELECT * FROM unnest($3::bigint[], $4::int[]))",
        )
        .bind(node)
        .bind(micros(lease))
        .bind(&seqs)
        .bind(&positions)
        .execute(pool)
        .await
        .map_err(super::unavailable)?;
    }
    let rescued = requeue_expired(pool).await?;
    if rescued > 0 {
        tracing::warn!(
            batches = rescued,
            "re-queued batches whose node stopped renewing its lease"
        );
        signals.work_available();
        signals.events_stored();
    }
    Ok(())
}
