//! The embedded default store: one SQLite file in WAL mode with
//! `synchronous=FULL`, so an acknowledged write survives a crash of the process
//! or of the machine.
//!
//! One thread owns the only writing connection and applies every write (new
//! requests, claims, completions) in group commits: it takes all the commands
//! that are waiting, runs each inside its own savepoint, commits once, and only
//! then answers each caller. One fsync thus serves many requests, and the
//! dispatcher's claims are serialised with ingests without any lock of ours.
//! Reads go to a small pool of read-only connections, which WAL lets run beside
//! the writer.

mod fair;
mod prune;
mod reads;
mod schema;
mod writer;
mod writes;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use self::writer::Job;
use super::{
    AttemptEnd, BatchKey, BatchOutcomes, CallbackDelivery, ClaimOutcome, ClaimRequest, Created,
    DueCallback, Event, IngestionRecord, IngestionSummary, NewIngestion, Prune, QueueChange,
    QueueState, QueueStats, Store, StoreError,
};
use crate::domain::{IdOutcome, IngestionId, TenantName, Timestamp};
use crate::queue::QueueName;

/// How many writes may wait for the writer before callers are held back.
const WRITE_QUEUE: usize = 8192;
/// How many read-only connections serve status reads.
const READERS: usize = 4;
/// The most batches of a status read run on the runtime's own thread (a few
/// hundred microseconds at most); bigger ones go to a blocking thread.
const INLINE_MAX_BATCHES: u32 = 256;

pub struct SqliteStore {
    writes: mpsc::Sender<Job>,
    readers: Arc<ReaderPool>,
    /// An exclusive lock on `<database>.lock`, held while the store is open: two
    /// processes dispatching from one file would break the rate limit.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if missing) the database named by a `sqlite:` URL, such
    /// as `sqlite://sluice.db` or `sqlite:///var/lib/sluice/sluice.db`, and
    /// applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let path = path_from_url(url)?;
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    fn open_blocking(path: &Path) -> Result<Self, StoreError> {
        let lock = lock_file(path)?;
        let mut conn = schema::open_writer(path)?;
        schema::migrate(&mut conn)?;
        let readers = (0..READERS)
            .map(|_| schema::open_reader(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;

        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("sluice-sqlite-writer".into())
            .spawn(move || writer::run(conn, queue))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;

        Ok(Self {
            writes,
            readers: Arc::new(ReaderPool {
                connections: readers,
                next: AtomicUsize::new(0),
            }),
            _lock: lock,
        })
    }

    /// Runs `op` on the writer thread, in the next group commit.
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        write_via(&self.writes, op).await
    }

    /// Runs `query` on a reader connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.with(query))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_ingestion(&self, new: NewIngestion) -> Result<Created, StoreError> {
        self.write(move |conn| writes::create_ingestion(conn, &new))
            .await
    }

    async fn ingestion(&self, id: IngestionId) -> Result<Option<IngestionRecord>, StoreError> {
        // A status read is tens of microseconds: handing it to a blocking
        // thread and back cost more than the read itself (docs/performance.md).
        // So a small one runs right here, on an idle connection, and only a big
        // request, or a moment when every connection is busy, goes the long way.
        if let Some(conn) = self.readers.try_idle() {
            let bounded = in_snapshot(&conn, |conn| {
                reads::ingestion_bounded(conn, id, Some(INLINE_MAX_BATCHES))
            })?;
            if let reads::Bounded::Within(record) = bounded {
                return Ok(record);
            }
        }
        self.read(move |conn| reads::ingestion(conn, id)).await
    }

    async fn ingestion_page(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<IngestionRecord>, StoreError> {
        // As for `ingestion`: a small page on an idle connection runs here.
        if limit <= INLINE_MAX_BATCHES as usize
            && let Some(conn) = self.readers.try_idle()
        {
            return in_snapshot(&conn, |conn| reads::ingestion_page(conn, id, after, limit));
        }
        self.read(move |conn| reads::ingestion_page(conn, id, after, limit))
            .await
    }

    async fn claim_batches(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.write(move |conn| writes::claim_batches(conn, request))
            .await
    }

    async fn finish_attempt(
        &self,
        batch: BatchKey,
        outcomes: Vec<IdOutcome>,
        end: AttemptEnd,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| writes::finish_attempt(conn, batch, &outcomes, end, at))
            .await
    }

    async fn cancel_ingestion(
        &self,
        id: IngestionId,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        self.write(move |conn| writes::cancel_ingestion(conn, id, at))
            .await
    }

    async fn batch_outcomes(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<Vec<BatchOutcomes>>, StoreError> {
        self.read(move |conn| reads::batch_outcomes(conn, id, after, limit))
            .await
    }

    /// Only one process uses the file (see the lock), so every `triggered`
    /// batch belonged to a process that is gone.
    async fn requeue_interrupted(&self, _at: Timestamp) -> Result<u64, StoreError> {
        self.write(writes::requeue_triggered).await
    }

    async fn release_unfinished(
        &self,
        queue: &QueueName,
        _at: Timestamp,
    ) -> Result<u64, StoreError> {
        let queue = queue.clone();
        self.write(move |conn| writes::requeue_queue(conn, &queue))
            .await
    }

    async fn events_after(
        &self,
        after: u64,
        ingestion: Option<IngestionId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(move |conn| reads::events_after(conn, after, ingestion, limit))
            .await
    }

    async fn tenant_events_after(
        &self,
        after: u64,
        tenant: &TenantName,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| reads::tenant_events_after(conn, after, &tenant, limit))
            .await
    }

    async fn tenant_ingestions(
        &self,
        tenant: &TenantName,
        limit: usize,
    ) -> Result<Vec<IngestionSummary>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| reads::tenant_ingestions(conn, &tenant, limit))
            .await
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        self.read(reads::latest_event).await
    }

    async fn oldest_event(&self) -> Result<Option<u64>, StoreError> {
        self.read(reads::oldest_event).await
    }

    async fn recent_ingestions(&self, limit: usize) -> Result<Vec<IngestionSummary>, StoreError> {
        self.read(move |conn| reads::recent_ingestions(conn, limit))
            .await
    }

    async fn waiting_batches(&self) -> Result<Vec<(QueueName, u64)>, StoreError> {
        self.read(reads::waiting_batches).await
    }

    async fn register_queues(&self, names: &[QueueName]) -> Result<(), StoreError> {
        let names = names.to_vec();
        self.write(move |conn| writes::register_queues(conn, &names))
            .await
    }

    async fn queue_state(&self, name: &QueueName) -> Result<Option<QueueState>, StoreError> {
        let name = name.clone();
        self.read(move |conn| reads::queue_state(conn, &name)).await
    }

    async fn change_queue(
        &self,
        name: &QueueName,
        change: QueueChange,
    ) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(move |conn| writes::change_queue(conn, &name, &change))
            .await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        // Reads alone would stay ready with the writer gone, while every
        // write failed.
        if self.writes.is_closed() {
            return Err(StoreError::Unavailable(
                "the SQLite writer thread has stopped".into(),
            ));
        }
        self.read(schema::check_current).await
    }

    async fn claim_due_callbacks(
        &self,
        now: Timestamp,
        hold: Duration,
        limit: usize,
    ) -> Result<Vec<DueCallback>, StoreError> {
        self.write(move |conn| writes::claim_due_callbacks(conn, now, hold, limit))
            .await
    }

    async fn finish_callback(
        &self,
        ingestion: IngestionId,
        delivery: CallbackDelivery,
    ) -> Result<(), StoreError> {
        self.write(move |conn| writes::finish_callback(conn, ingestion, &delivery))
            .await
    }

    async fn next_callback_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(reads::next_callback_due).await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.read(reads::stats).await
    }

    fn pruning(&self) -> Option<Arc<dyn Prune>> {
        Some(Arc::new(prune::SqlitePrune {
            writes: self.writes.clone(),
        }))
    }
}

/// Runs `op` on the writer thread behind `writes`, in the next group commit.
async fn write_via<T: Send + 'static>(
    writes: &mpsc::Sender<Job>,
    op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let (reply, answer) = oneshot::channel();
    writes
        .send(Job::new(op, reply))
        .await
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

struct ReaderPool {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl ReaderPool {
    /// Runs `query` on an idle connection, in one snapshot. The search for an
    /// idle connection starts at the next one round robin, and only when all
    /// are busy does the read wait for one: a long read (the results of a big
    /// request) then holds up no status read while another connection is free.
    /// A std `Mutex` is right here: the caller is on a blocking thread, and the
    /// runtime's threads only ever `try_lock`.
    fn with<T>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.try_idle().unwrap_or_else(|| {
            let next = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
            self.connections[next]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        in_snapshot(&conn, query)
    }

    /// A connection no one is using, without waiting for one.
    fn try_idle(&self) -> Option<MutexGuard<'_, Connection>> {
        let n = self.connections.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).find_map(|k| self.connections[(first + k) % n].try_lock().ok())
    }
}

/// Runs `query` in one read transaction: every statement sees the same
/// snapshot, so a request is never seen half-way through a commit.
fn in_snapshot<T>(
    conn: &Connection,
    query: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let snapshot = conn.unchecked_transaction()?;
    let result = query(&snapshot)?;
    snapshot.commit()?;
    Ok(result)
}

fn path_from_url(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Unavailable(format!("not a sqlite: URL: {url}")))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Unavailable(
            "SQLite needs a file: an in-memory database would lose acknowledged requests".into(),
        ));
    }
    Ok(PathBuf::from(path))
}

fn lock_file(db: &Path) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", db.display())))?;
    file.try_lock().map_err(|_| {
        StoreError::Unavailable(format!(
            "{} is in use by another Sluice process; several nodes need PostgreSQL",
            db.display()
        ))
    })?;
    Ok(file)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // A string or blob over SQLite's length limit: the content, not the store.
            Some(rusqlite::ErrorCode::TooBig) => StoreError::Rejected(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
