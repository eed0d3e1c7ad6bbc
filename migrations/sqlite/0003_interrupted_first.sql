-- A batch interrupted while processing (a crash, or a shutdown whose grace ran
-- out) had started: it keeps reading `triggered`, waits as a batch between
-- attempts (status 3, so it does not count as processing), and runs again
-- before any other waiting batch, whatever their priority, since a started
-- batch is never pre-empted. `lane` 0 marks it; the queue is now ordered by
-- lane first.
DROP INDEX batches_waiting;
CREATE INDEX batches_waiting ON batches (lane, priority, ingestion_seq, position)
    WHERE status IN (0, 3);

-- Batches that an earlier version put back as `yet_to_start` after a crash had
-- started: they read `triggered` again.
UPDATE batches SET status = 3, retry_at = NULL WHERE status = 0 AND attempts > 0;
