//! The order a claim takes waiting batches in (migration 0006 explains the
//! tables): interrupted work first, then aged work, then the most urgent
//! priority, in SPEC.md's order (`fifo`) or in fair turns (`tenant`).
//! Every step is an index lookup: its cost does not grow with the number of
//! tenants or groups.

use rusqlite::{Connection, OptionalExtension, params};

use std::time::Duration;

use crate::domain::{Priority, Timestamp};
use crate::queue::{DispatchOrder, Fairness};
use crate::store::StoreError;

/// How many emptied flows one claim sets right before it falls back to
/// SPEC.md's order.
const HEALS: usize = 64;

/// A batch's key: its request's arrival number and its position.
pub type Key = (i64, u32);

/// The flow of a request's batches (its queue, priority, tenant and group),
/// made if new, with `n` more fresh batches. A tenant or group that had
/// nothing waiting joins the turns where they are now.
pub fn join_flow(
    conn: &Connection,
    queue: i64,
    priority: Priority,
    tenant: &str,
    group: &str,
    n: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO fair_tenants (queue, priority, tenant, pass, waiting)
         VALUES (?1, ?2, ?3,
                 coalesce((SELECT clock FROM fair_clocks WHERE queue = ?1 AND priority = ?2), 0),
                 ?4)
         ON CONFLICT (queue, priority, tenant) DO UPDATE SET
             pass = CASE WHEN waiting = 0 THEN max(pass, excluded.pass) ELSE pass END,
             waiting = waiting + excluded.waiting",
    )?
    .execute(params![queue, priority.rank(), tenant, n])?;
    let flow = conn
        .prepare_cached(
            "INSERT INTO fair_flows (queue, priority, tenant, grp, pass, waiting)
             VALUES (?1, ?2, ?3, ?4,
                     (SELECT group_clock FROM fair_tenants
                      WHERE queue = ?1 AND priority = ?2 AND tenant = ?3),
                     ?5)
             ON CONFLICT (queue, priority, tenant, grp) DO UPDATE SET
                 pass = CASE WHEN waiting = 0 THEN max(pass, excluded.pass) ELSE pass END,
                 waiting = waiting + excluded.waiting
             RETURNING id",
        )?
        .query_row(params![queue, priority.rank(), tenant, group, n], |row| {
            row.get(0)
        })?;
    Ok(flow)
}

/// A fresh batch of `flow` was claimed: its tenant and its group used a
/// turn, and the turns move on to where they were.
pub fn take_turn(conn: &Connection, flow: i64, order: &DispatchOrder) -> Result<(), StoreError> {
    let Some((queue, priority, tenant, group_pass)) = conn
        .prepare_cached("SELECT queue, priority, tenant, pass FROM fair_flows WHERE id = ?1")?
        .query_row([flow], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()?
    else {
        return Ok(());
    };
    let pass: i64 = conn
        .prepare_cached(
            "UPDATE fair_tenants SET waiting = max(waiting - 1, 0), pass = pass + ?4,
                                     group_clock = ?5
             WHERE queue = ?1 AND priority = ?2 AND tenant = ?3
             RETURNING pass - ?4",
        )?
        .query_row(
            params![queue, priority, tenant, order.stride(&tenant), group_pass],
            |row| row.get(0),
        )?;
    conn.prepare_cached(
        "UPDATE fair_flows SET waiting = max(waiting - 1, 0), pass = pass + ?2 WHERE id = ?1",
    )?
    .execute(params![flow, crate::queue::TURN])?;
    conn.prepare_cached(
        "INSERT INTO fair_clocks (queue, priority, clock) VALUES (?1, ?2, ?3)
         ON CONFLICT (queue, priority) DO UPDATE SET clock = excluded.clock",
    )?
    .execute(params![queue, priority, pass])?;
    Ok(())
}

/// The batch a claim in `queue` takes now, if any may start.
pub fn next_batch(
    conn: &Connection,
    queue: i64,
    now: Timestamp,
    order: &DispatchOrder,
) -> Result<Option<Key>, StoreError> {
    let now = now.as_micros();
    // Interrupted work first, most urgent first.
    let interrupted = conn
        .prepare_cached(
            "SELECT ingestion_seq, position FROM batches
             WHERE queue = ?1 AND lane = 0 AND status IN (0, 3)
               AND (retry_at IS NULL OR retry_at <= ?2)
             ORDER BY priority, ingestion_seq, position LIMIT 1",
        )?
        .query_row(params![queue, now], key)
        .optional()?;
    if interrupted.is_some() {
        return Ok(interrupted);
    }
    // The oldest waiting batch of the most urgent priority: SPEC.md's next.
    let Some((first, native)) = oldest(conn, queue, now, None)? else {
        return Ok(None);
    };
    if let Some(aged) = aged(conn, queue, now, order, native)? {
        return Ok(Some(aged));
    }
    if order.fairness == Fairness::Fifo {
        return Ok(Some(first));
    }
    // Fair turns inside `native`: a retry that is due goes first (it had its
    // turn), then the tenant of the lowest pass, its group of the lowest pass.
    let retry = conn
        .prepare_cached(
            "SELECT ingestion_seq, position FROM batches
             WHERE queue = ?1 AND status = 3 AND lane = 1 AND priority = ?2 AND retry_at <= ?3
             ORDER BY ingestion_seq, position LIMIT 1",
        )?
        .query_row(params![queue, native.rank(), now], key)
        .optional()?;
    if retry.is_some() {
        return Ok(retry);
    }
    for _ in 0..HEALS {
        let Some(turn) = conn
            .prepare_cached(
                "SELECT t.tenant, t.pass, t.group_clock, f.id, f.waiting, f.pass,
                        coalesce((SELECT clock FROM fair_clocks WHERE queue = ?1 AND priority = ?2), 0)
                 FROM (SELECT tenant, pass, group_clock FROM fair_tenants
                       WHERE queue = ?1 AND priority = ?2 AND waiting > 0
                       ORDER BY pass, tenant LIMIT 1) t
                 JOIN fair_flows f ON f.id = (
                     SELECT id FROM fair_flows
                     WHERE queue = ?1 AND priority = ?2 AND tenant = t.tenant AND waiting > 0
                     ORDER BY pass, id LIMIT 1)",
            )?
            .query_row(params![queue, native.rank()], |row| {
                Ok(Turn {
                    tenant: row.get(0)?,
                    pass: row.get(1)?,
                    group_clock: row.get(2)?,
                    flow: row.get(3)?,
                    counted: row.get(4)?,
                    flow_pass: row.get(5)?,
                    clock: row.get(6)?,
                })
            })
            .optional()?
        else {
            break;
        };
        let Turn {
            tenant,
            flow,
            counted,
            ..
        } = &turn;
        // Every tenant with work waiting is at or past the clock (the clock is
        // the pass of the lowest served); one behind it joined with a clock
        // read before claims moved it (on PostgreSQL a new request reads it
        // without waiting for them): it joins at the clock now. Its groups
        // likewise.
        if turn.pass < turn.clock {
            conn.prepare_cached(
                "UPDATE fair_tenants SET pass = ?4 WHERE queue = ?1 AND priority = ?2 AND tenant = ?3",
            )?
            .execute(params![queue, native.rank(), tenant, turn.clock])?;
            continue;
        }
        if turn.flow_pass < turn.group_clock {
            conn.prepare_cached("UPDATE fair_flows SET pass = ?2 WHERE id = ?1")?
                .execute(params![flow, turn.group_clock])?;
            continue;
        }
        let batch = conn
            .prepare_cached(
                "SELECT ingestion_seq, position FROM batches
                 WHERE flow = ?1 AND status = 0 AND lane = 1
                 ORDER BY ingestion_seq, position LIMIT 1",
            )?
            .query_row([flow], key)
            .optional()?;
        if batch.is_some() {
            return Ok(batch);
        }
        // Cancelled work leaves its count behind (a cancel never waits for
        // the turns' rows): the flow has nothing left; set it right.
        conn.prepare_cached(
            "UPDATE fair_tenants SET waiting = max(waiting - ?4, 0)
             WHERE queue = ?1 AND priority = ?2 AND tenant = ?3",
        )?
        .execute(params![queue, native.rank(), tenant, counted])?;
        conn.prepare_cached("UPDATE fair_flows SET waiting = 0 WHERE id = ?1")?
            .execute([flow])?;
    }
    // Whatever the counts say, SPEC.md's order starts something rather than
    // nothing.
    Ok(Some(first))
}

/// The oldest batch that may start now, of `priority` or of any priority,
/// with its priority.
fn oldest(
    conn: &Connection,
    queue: i64,
    now: i64,
    priority: Option<Priority>,
) -> Result<Option<(Key, Priority)>, StoreError> {
    let (low, high) = priority.map_or((0, 2), |p| (p.rank(), p.rank()));
    let row = conn
        .prepare_cached(
            "SELECT ingestion_seq, position, priority FROM batches
             WHERE queue = ?1 AND lane = 1 AND priority BETWEEN ?2 AND ?3 AND status IN (0, 3)
               AND (retry_at IS NULL OR retry_at <= ?4)
             ORDER BY priority, ingestion_seq, position LIMIT 1",
        )?
        .query_row(params![queue, low, high, now], |row| {
            Ok((key(row)?, row.get::<_, i64>(2)?))
        })
        .optional()?;
    row.map(|(key, rank)| Ok((key, crate::store::codec::priority(rank)?)))
        .transpose()
}

/// The oldest batch of a less urgent priority than `native` that has waited
/// long enough to rank with it (or above it), the most promoted first.
fn aged(
    conn: &Connection,
    queue: i64,
    now: i64,
    order: &DispatchOrder,
    native: Priority,
) -> Result<Option<Key>, StoreError> {
    if order.aging.is_none() {
        return Ok(None);
    }
    let mut best: Option<(Priority, i64, Key)> = None;
    for priority in Priority::ALL.into_iter().filter(|p| *p > native) {
        let Some((key, _)) = oldest(conn, queue, now, Some(priority))? else {
            continue;
        };
        let created: i64 = conn
            .prepare_cached("SELECT created_at FROM ingestions WHERE seq = ?1")?
            .query_row([key.0], |row| row.get(0))?;
        let waited = Duration::from_micros(u64::try_from(now - created).unwrap_or(0));
        let rank = order.effective_priority(priority, waited);
        let better = best.is_none_or(|(r, seq, _)| (rank, key.0) < (r, seq));
        if rank <= native && better {
            best = Some((rank, key.0, key));
        }
    }
    Ok(best.map(|(_, _, key)| key))
}

/// The tenant whose turn it is, and its group whose turn it is.
struct Turn {
    tenant: String,
    pass: i64,
    group_clock: i64,
    flow: i64,
    /// The flow's count of fresh batches.
    counted: i64,
    flow_pass: i64,
    /// The priority's clock: the pass of the tenant served last.
    clock: i64,
}

fn key(row: &rusqlite::Row<'_>) -> rusqlite::Result<Key> {
    Ok((row.get(0)?, row.get(1)?))
}
