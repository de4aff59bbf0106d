-- An append at a stale expected version fails the whole statement (and so
-- its transaction) instead of inserting nothing: a writer can then send the
-- append, its other writes and COMMIT in one round trip, and a lost race
-- commits none of them.
CREATE FUNCTION hookstream_version_conflict() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'expected stream version does not match' USING ERRCODE = 'HS409';
END
$$;
