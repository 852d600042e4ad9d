-- Who builds the search indexes now (collector/searchindex.py): a lease in a row, not a
-- session advisory lock, which PgBouncer's transaction pooling would leave held on whichever
-- server connection took it. One row at most; an expired lease is anybody's.
CREATE TABLE search_index_lease (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    holder text NOT NULL,
    until timestamptz NOT NULL
);
