"""The schema of each engine, as numbered migrations.

Both engines are at the same schema version with the same tables and columns (so that a store can
be copied from one to the other). ``SQLITE_MIGRATIONS[i]`` takes a SQLite store from version ``i``
to ``i + 1`` (SQLite keeps the version in ``PRAGMA user_version``). PostgreSQL support began at
version 3: ``POSTGRES_BASELINE`` creates an empty database at that version in one go, and
``POSTGRES_MIGRATIONS[i]`` takes it from ``POSTGRES_BASELINE_VERSION + i`` on (the version is the
row of ``switch_schema``). A migration for a new version is added to both lists together.
"""

from __future__ import annotations

SQLITE_MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the initial schema.
    """
    CREATE TABLE tenant_state (
        tenant TEXT PRIMARY KEY,
        provisioning_enabled INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE provisioning_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        name_folded TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked')),
        secret_hash BLOB NOT NULL,
        profile TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_used_at INTEGER,
        certificates_issued INTEGER NOT NULL DEFAULT 0,
        state_reason TEXT,
        UNIQUE (tenant, name_folded)
    );
    CREATE INDEX provisioning_keys_tenant_state ON provisioning_keys (tenant, state);
    CREATE TABLE issuers (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        seq INTEGER NOT NULL,
        cert_pem TEXT NOT NULL,
        key_path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        retired_at INTEGER,
        UNIQUE (tenant, seq)
    );
    CREATE TABLE certificates (
        serial TEXT NOT NULL,
        issuer_id TEXT NOT NULL REFERENCES issuers (id),
        tenant TEXT NOT NULL,
        key_id TEXT REFERENCES provisioning_keys (id),
        subject TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        pem TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'valid' CHECK (state IN ('valid', 'revoked')),
        revoked_at INTEGER,
        revoke_reason TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (issuer_id, serial)
    );
    CREATE INDEX certificates_tenant_key ON certificates (tenant, key_id);
    CREATE INDEX certificates_serial ON certificates (serial);
    CREATE TABLE pending_requests (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        key_id TEXT REFERENCES provisioning_keys (id),
        csr_der BLOB NOT NULL,
        request_digest TEXT NOT NULL,
        subject TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'issued')),
        created_at INTEGER NOT NULL,
        decided_at INTEGER,
        decided_by TEXT,
        reason TEXT,
        certificate_serial TEXT,
        UNIQUE (tenant, request_digest)
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        actor TEXT NOT NULL,
        tenant TEXT,
        action TEXT NOT NULL,
        target TEXT,
        reason TEXT,
        details TEXT NOT NULL DEFAULT '{}',
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE audit_head (last_seq INTEGER NOT NULL, last_hash TEXT NOT NULL);
    INSERT INTO audit_head VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
    CREATE TABLE changes (generation INTEGER NOT NULL);
    INSERT INTO changes VALUES (0);
    """,
    # 1 -> 2: which operation a pending request is for. A serverkeygen request has no client
    # key: approving it lets the server make one key pair for that provisioning key and CN.
    """
    ALTER TABLE pending_requests ADD COLUMN operation TEXT NOT NULL DEFAULT 'simpleenroll';
    """,
    # 2 -> 3: issuer keys sealed in the store (PostgreSQL; SQLite keeps 0600 files), operators,
    # the shared wrong-key rate limit, and indexes for the audit log's filters.
    """
    ALTER TABLE issuers ADD COLUMN key_sealed BLOB;
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        name_folded TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('security-read', 'security-admin')),
        tenants TEXT,
        token_id TEXT NOT NULL UNIQUE,
        token_hash BLOB NOT NULL,
        password_hash TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE auth_failures (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX auth_failures_source ON auth_failures (source, at);
    CREATE INDEX auth_failures_at ON auth_failures (at);
    CREATE INDEX audit_log_actor ON audit_log (actor, seq);
    CREATE INDEX audit_log_action ON audit_log (action, seq);
    CREATE INDEX audit_log_ts ON audit_log (ts, seq);
    """,
    # 3 -> 4: the order rows were inserted in, for lists (keys, certificates, requests): a
    # stable order where creation times tie (same second). The rowid is that order for the rows
    # already there (these tables have never had a row deleted); a trigger numbers new rows.
    """
    ALTER TABLE provisioning_keys ADD COLUMN insert_seq INTEGER;
    UPDATE provisioning_keys SET insert_seq = rowid;
    CREATE INDEX provisioning_keys_insert_order ON provisioning_keys (insert_seq);
    CREATE TRIGGER provisioning_keys_insert_seq AFTER INSERT ON provisioning_keys WHEN NEW.insert_seq IS NULL
        BEGIN UPDATE provisioning_keys SET insert_seq = (SELECT COALESCE(MAX(insert_seq), 0) + 1 FROM provisioning_keys)
              WHERE rowid = NEW.rowid; END;
    ALTER TABLE certificates ADD COLUMN insert_seq INTEGER;
    UPDATE certificates SET insert_seq = rowid;
    CREATE INDEX certificates_insert_order ON certificates (insert_seq);
    CREATE TRIGGER certificates_insert_seq AFTER INSERT ON certificates WHEN NEW.insert_seq IS NULL
        BEGIN UPDATE certificates SET insert_seq = (SELECT COALESCE(MAX(insert_seq), 0) + 1 FROM certificates)
              WHERE rowid = NEW.rowid; END;
    ALTER TABLE pending_requests ADD COLUMN insert_seq INTEGER;
    UPDATE pending_requests SET insert_seq = rowid;
    CREATE INDEX pending_requests_insert_order ON pending_requests (insert_seq);
    CREATE TRIGGER pending_requests_insert_seq AFTER INSERT ON pending_requests WHEN NEW.insert_seq IS NULL
        BEGIN UPDATE pending_requests SET insert_seq = (SELECT COALESCE(MAX(insert_seq), 0) + 1 FROM pending_requests)
              WHERE rowid = NEW.rowid; END;
    """,
    # 4 -> 5: the console's sign-in sessions (gateway.api.session). Only a hash of each
    # session id is kept; each row carries its own idle timeout and absolute expiry.
    """
    CREATE TABLE console_sessions (
        id_hash TEXT PRIMARY KEY,
        operator TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        idle_timeout INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        source TEXT NOT NULL
    );
    CREATE INDEX console_sessions_operator ON console_sessions (operator);
    CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
    """,
    # 5 -> 6: what every serving process reads on each change and each minute
    # (``trust_inputs``) and the unique-subject check of each enrollment no longer scan the
    # certificates: the revoked ones (a partial index), each issuer's latest expiry, a subject.
    # With 60,000 certificates the trust read took 1.1 to 2.5 s in each of six workers.
    """
    CREATE INDEX certificates_revoked ON certificates (tenant, sha256) WHERE state = 'revoked';
    CREATE INDEX certificates_issuer_expiry ON certificates (issuer_id, not_after);
    CREATE INDEX certificates_subject ON certificates (tenant, subject);
    """,
)

SCHEMA_VERSION = len(SQLITE_MIGRATIONS)
#: Tables whose rows are listed in the order they were inserted (``insert_seq``; with PostgreSQL
#: each has a sequence of the same name, ``TABLE_insert_seq``).
INSERT_ORDERED: tuple[str, ...] = ("provisioning_keys", "certificates", "pending_requests")
#: Every table both engines hold, parents before the tables whose foreign keys name them: the
#: order in which a copy from one store to another moves them (``store_meta`` and
#: ``switch_schema`` are PostgreSQL's own and are not copied).
TABLES: tuple[str, ...] = (
    "tenant_state", "provisioning_keys", "issuers", "certificates", "pending_requests",
    "audit_log", "audit_head", "changes", "operators", "auth_failures", "console_sessions",
)

POSTGRES_BASELINE_VERSION = 3
POSTGRES_BASELINE = """
CREATE TABLE tenant_state (
    tenant TEXT PRIMARY KEY,
    provisioning_enabled INTEGER NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE TABLE provisioning_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    name_folded TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked')),
    secret_hash BYTEA NOT NULL,
    profile TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT,
    certificates_issued BIGINT NOT NULL DEFAULT 0,
    state_reason TEXT,
    UNIQUE (tenant, name_folded)
);
CREATE INDEX provisioning_keys_tenant_state ON provisioning_keys (tenant, state);
CREATE TABLE issuers (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    seq INTEGER NOT NULL,
    cert_pem TEXT NOT NULL,
    key_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    key_sealed BYTEA,
    UNIQUE (tenant, seq)
);
CREATE TABLE certificates (
    serial TEXT NOT NULL,
    issuer_id TEXT NOT NULL REFERENCES issuers (id),
    tenant TEXT NOT NULL,
    key_id TEXT REFERENCES provisioning_keys (id),
    subject TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'valid' CHECK (state IN ('valid', 'revoked')),
    revoked_at BIGINT,
    revoke_reason TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, serial)
);
CREATE INDEX certificates_tenant_key ON certificates (tenant, key_id);
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_revoked ON certificates (tenant) WHERE state = 'revoked';
CREATE TABLE pending_requests (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_id TEXT REFERENCES provisioning_keys (id),
    csr_der BYTEA NOT NULL,
    request_digest TEXT NOT NULL,
    subject TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'issued')),
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    reason TEXT,
    certificate_serial TEXT,
    operation TEXT NOT NULL DEFAULT 'simpleenroll',
    UNIQUE (tenant, request_digest)
);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    ts BIGINT NOT NULL,
    actor TEXT NOT NULL,
    tenant TEXT,
    action TEXT NOT NULL,
    target TEXT,
    reason TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_ts ON audit_log (ts, seq);
CREATE FUNCTION switch_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION switch_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION switch_audit_log_append_only();
CREATE TABLE audit_head (last_seq BIGINT NOT NULL, last_hash TEXT NOT NULL);
INSERT INTO audit_head VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE changes (generation BIGINT NOT NULL);
INSERT INTO changes VALUES (0);
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    name_folded TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('security-read', 'security-admin')),
    tenants TEXT,
    token_id TEXT NOT NULL UNIQUE,
    token_hash BYTEA NOT NULL,
    password_hash TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE auth_failures (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX auth_failures_source ON auth_failures (source, at);
CREATE INDEX auth_failures_at ON auth_failures (at);
-- PostgreSQL only: what proves a host holds the right issuer key passphrase.
CREATE TABLE store_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
"""


def _insert_order_postgres(table: str) -> str:
    """PostgreSQL 3 -> 4 for one table: ``insert_seq`` numbered by a sequence of its own; the
    rows already there numbered by creation time (ties in no particular order, as they were
    listed before)."""
    return f"""
ALTER TABLE {table} ADD COLUMN insert_seq BIGINT;
UPDATE {table} AS t SET insert_seq = o.n
    FROM (SELECT ctid AS rid, row_number() OVER (ORDER BY created_at) AS n FROM {table}) AS o
    WHERE t.ctid = o.rid;
CREATE SEQUENCE {table}_insert_seq OWNED BY {table}.insert_seq;
SELECT setval('{table}_insert_seq', (SELECT COALESCE(MAX(insert_seq), 0) + 1 FROM {table}), false);
ALTER TABLE {table} ALTER COLUMN insert_seq SET DEFAULT nextval('{table}_insert_seq'),
    ALTER COLUMN insert_seq SET NOT NULL;
CREATE INDEX {table}_insert_order ON {table} (insert_seq);
"""


POSTGRES_MIGRATIONS: tuple[str, ...] = (
    # 3 -> 4: insertion order (see SQLite's 3 -> 4).
    "".join(_insert_order_postgres(t)
            for t in ("provisioning_keys", "certificates", "pending_requests")),
    # 4 -> 5: the console's sign-in sessions (see SQLite's 4 -> 5).
    """
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    idle_timeout BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX console_sessions_operator ON console_sessions (operator);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
""",
    # 5 -> 6: the certificates' indexes of the trust read and the subject check (see SQLite's).
    # The baseline's partial index on the revoked certificates held the tenant only: the read
    # still fetched each row for its sha256. Replaced by a covering one of the same name.
    """
DROP INDEX IF EXISTS certificates_revoked;
CREATE INDEX certificates_revoked ON certificates (tenant, sha256) WHERE state = 'revoked';
CREATE INDEX certificates_issuer_expiry ON certificates (issuer_id, not_after);
CREATE INDEX certificates_subject ON certificates (tenant, subject);
""",
)
assert POSTGRES_BASELINE_VERSION + len(POSTGRES_MIGRATIONS) == SCHEMA_VERSION
