-- Batched completions: a node records the attempts that ended while its
-- previous commit was in flight in one statement and one commit, instead of
-- one commit each. The unthrottled drain spent its time in `sluice_finish`
-- queued on the request's row (every attempt of a request updates
-- `open_batches` in it, and holds it through the commit's WAL flush); here a
-- group takes each request's row once and closes its batches with one update.
--
-- Locking, in 0001's order: the requests' rows first, in `seq` order (so two
-- nodes' groups never wait on each other in a cycle), then the batches' rows,
-- then, after every row, the event lock for all the group's events.
--
-- The arrays are parallel, one element per attempt. The answer has a row per
-- attempt, `k` its index (from 1): `ended` NULL when the node no longer held
-- the batch's lease (nothing of it is recorded), else whether this group
-- ended the attempt's request.
CREATE FUNCTION sluice_finish_many(
    node UUID, seqs BIGINT[], positions INTEGER[], statuses INTEGER[], retry_ats BIGINT[],
    results_ TEXT[], ats BIGINT[]
) RETURNS TABLE (k INTEGER, ended BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    n        INTEGER := cardinality(seqs);
    v_final    INTEGER[] := statuses;
    v_recorded BOOLEAN[] := array_fill(FALSE, ARRAY[cardinality(seqs)]);
    v_done     BIGINT[] := '{}';
    r        RECORD;
    i        INTEGER;
BEGIN
    -- The requests' rows, each once, in seq order. A cancel racing these
    -- attempts either sees their retries (and cancels them) or is seen here.
    FOR r IN
        SELECT x.seq, x.cancelled_at IS NOT NULL AS cancelled FROM ingestions x
        WHERE x.seq = ANY(seqs) ORDER BY x.seq FOR NO KEY UPDATE
    LOOP
        IF r.cancelled THEN
            FOR i IN 1..n LOOP
                IF seqs[i] = r.seq AND v_final[i] = 3 THEN
                    v_final[i] := 5;
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    -- Only the lease holder records an attempt.
    FOR i IN 1..n LOOP
        UPDATE batches
        SET status = v_final[i],
            retry_at = CASE WHEN v_final[i] = 3 THEN retry_ats[i] + (sluice_now_us() - ats[i]) END,
            completed_at = CASE WHEN v_final[i] IN (2, 4, 5) THEN ats[i] END,
            results = results_[i], lease_owner = NULL, lease_expires_at = NULL
        WHERE ingestion_seq = seqs[i] AND position = positions[i] AND status = 1
          AND lease_owner = node;
        v_recorded[i] := FOUND;
    END LOOP;
    -- Each request's batches that ended here close with one update; the last
    -- of them ends the request at the latest attempt's time.
    FOR r IN
        SELECT t.seq, count(*)::INTEGER AS closed, max(t.at) AS at
        FROM unnest(seqs, v_final, v_recorded, ats) AS t (seq, status, kept, at)
        WHERE t.kept AND t.status <> 3
        GROUP BY t.seq ORDER BY t.seq
    LOOP
        IF sluice_close_batches(r.seq, r.closed, r.at) THEN
            v_done := v_done || r.seq;
        END IF;
    END LOOP;
    -- The events last, in the group's order: each batch's, then each ended
    -- request's.
    FOR i IN 1..n LOOP
        IF v_recorded[i] AND v_final[i] <> 3 THEN
            PERFORM sluice_event(seqs[i], positions[i], v_final[i], ats[i]);
        END IF;
    END LOOP;
    FOR r IN
        SELECT t.seq, max(t.at) AS at FROM unnest(seqs, ats) AS t (seq, at)
        WHERE t.seq = ANY(v_done) GROUP BY t.seq ORDER BY t.seq
    LOOP
        PERFORM sluice_ended(r.seq, r.at);
    END LOOP;
    IF true = ANY(v_recorded) THEN
        PERFORM pg_notify('sluice_work', '');
    END IF;
    -- A request is ended by this group once: its first attempt in the group
    -- says so (as the single path answers for the attempt that ended it).
    RETURN QUERY
    SELECT t.k::INTEGER,
           CASE WHEN NOT t.kept THEN NULL
                ELSE t.seq = ANY(v_done) AND t.status <> 3
                     AND t.k = (SELECT min(u.k) FROM unnest(seqs, v_final, v_recorded)
                                WITH ORDINALITY AS u (seq, status, kept, k)
                                WHERE u.seq = t.seq AND u.status <> 3 AND u.kept)
           END
    FROM unnest(seqs, v_final, v_recorded) WITH ORDINALITY AS t (seq, status, kept, k)
    ORDER BY t.k;
END
$$;
