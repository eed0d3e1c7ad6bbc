//! Connections and migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// The schema's history, applied in order; `PRAGMA user_version` counts how many
/// a database has. Append, never edit: databases in the field have run them.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_init.sql"),
    include_str!("../../../migrations/sqlite/0002_batch_counts.sql"),
    include_str!("../../../migrations/sqlite/0003_interrupted_first.sql"),
    include_str!("../../../migrations/sqlite/0004_retention.sql"),
    include_str!("../../../migrations/sqlite/0005_queues.sql"),
    include_str!("../../../migrations/sqlite/0006_fairness.sql"),
    include_str!("../../../migrations/sqlite/0007_tenant_reads.sql"),
];

/// Waiting for a lock beats failing at once: the only other holder is a
/// checkpoint or a reader opening a snapshot.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block the writer nor see a half-made commit.
    // FULL: the WAL is fsynced at every commit, so an acknowledged request
    // survives power loss, not just a crash of the process.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let applied = schema_version(&tx)?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database is at schema version {applied}, newer than this Sluice knows ({}); \
             upgrade Sluice",
            MIGRATIONS.len()
        )));
    }
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

/// Fails unless every migration this version knows has been applied.
pub fn check_current(conn: &Connection) -> Result<(), StoreError> {
    let version = schema_version(conn)?;
    if version == MIGRATIONS.len() {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "schema version {version}, expected {}",
            MIGRATIONS.len()
        )))
    }
}

fn schema_version(conn: &Connection) -> Result<usize, StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    usize::try_from(version).map_err(|_| StoreError::Corrupt(format!("schema version {version}")))
}
