-- A recorded batch's pipeline opens with a guard instead of reading its
-- destination's circuit first (a round trip per batch): the guard fails
-- the transaction when the circuit is one the batch may move (the breaker
-- is on and the batch failed, or the circuit is not clean) or has no row
-- yet, and the batch is then recorded on the locked path.
CREATE FUNCTION hookstream_circuit_guard() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the destination''s circuit may move: record on the locked path' USING ERRCODE = 'HS412';
END
$$;
