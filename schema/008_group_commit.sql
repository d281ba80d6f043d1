-- Group commit (docs/performance.md, "Group commit"): kmsd hands the key
-- requests that arrive together to one call of qkms_session_key_batch, one
-- statement and one durable commit for all of them.
--
-- Element k of every array is request k's argument of qkms_session_key; its
-- rows carry i = k. Each element is exactly one qkms_session_key call, so a
-- request's outcome is what it would have been alone, with the requests
-- before it in the batch already applied (two parties of one session in one
-- batch: the first creates, the second finds). Elements run in session-hash
-- order: two batches that touch the same sessions lock them in the same
-- order and cannot deadlock on them. The binary arguments travel
-- hex-encoded in text arrays.
--
-- If any element raises an error, the whole statement rolls back and
-- nothing of the batch is kept; kmsd then runs each element alone, so only
-- the failing request fails. A lock wait inside a batch is bounded by
-- lock_timeout (1 s, this transaction only): a session row held long by
-- something else (a revoke ending many sessions, a rewrap) fails the batch
-- with 55P03 and the fallback, instead of the statement timeout failing
-- every request of the batch. Two batches cannot deadlock on session rows
-- (same order); a batch and a device revoke can (40P01), and then the
-- fallback and db_tx's retry of the revoke resolve it.
CREATE FUNCTION qkms_session_key_batch(
    p_device bigint[], p_key_index integer[], p_nonce text[], p_ts bigint[], p_skew integer[],
    p_hash text[], p_legacy text[], p_session_id text[], p_peer text[],
    p_want_delivered boolean[], c_key_id uuid[], c_wrapped text[], c_master integer[],
    c_provenance text[], c_bits integer[])
RETURNS TABLE (i integer, outcome text, out_key_id uuid, out_key_bits integer,
               out_wrapped bytea, out_expires bigint, out_policy text, out_delivery text,
               out_created boolean, out_hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
    e record;
BEGIN
    PERFORM set_config('lock_timeout', '1000', true);
    FOR e IN
        SELECT *
          FROM unnest(p_device, p_key_index, p_nonce, p_ts, p_skew, p_hash, p_legacy,
                      p_session_id, p_peer, p_want_delivered, c_key_id, c_wrapped, c_master,
                      c_provenance, c_bits) WITH ORDINALITY
               AS u(device, key_index, nonce, ts, skew, hash, legacy, session_id, peer,
                    want_delivered, key_id, wrapped, master, provenance, bits, ord)
         ORDER BY u.hash, u.ord
    LOOP
        RETURN QUERY
            SELECT e.ord::integer, k.*
              FROM qkms_session_key(e.device, e.key_index, decode(e.nonce, 'hex'), e.ts, e.skew,
                                    decode(e.hash, 'hex'), decode(e.legacy, 'hex'), e.session_id,
                                    e.peer, e.want_delivered, e.key_id, decode(e.wrapped, 'hex'),
                                    e.master, e.provenance, e.bits) k;
    END LOOP;
END $$;
