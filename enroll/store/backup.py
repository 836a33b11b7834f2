"""Backups of a SQLite deployment that lose nothing (``switch backup``), and restoring one into a
stopped deployment (``switch restore``).

Theory of operation. A plain copy of ``switch.db`` misses what is still in its write-ahead log
(``switch.db-wal``): every certificate issued since the last checkpoint. ``backup`` copies the
store with SQLite's online backup API instead, in one step, which reads one consistent snapshot
of the database *with* its WAL while Switch goes on serving (WAL readers do not block writers;
a write committed after the snapshot began is simply not in the copy). The copy is switched to a
self-contained single file without the console's sign-in sessions, checked (``PRAGMA
integrity_check``, the audit chain) and archived with the issuers' private keys it names: those
files are written before their issuer's row is committed and never changed, so every key a
copied row names is on disk.

The archive is a gzip-compressed tar, mode 0600 (it holds private keys), written beside its
destination and renamed into place:

- ``switch-backup.json``: the manifest (format, when, schema version, rows per table, the audit
  chain's head, the issuer key files);
- ``switch.db``: the store;
- ``issuers/TENANT/ISSUER_ID.key``: each issuer's private key.

``restore`` checks an archive completely (names, manifest, integrity, schema version, row counts,
the audit chain, each issuer key against its certificate) in a scratch directory inside the
state directory before anything there changes; then it moves a store that is there aside (with
``replace`` only) into ``replaced-TIMESTAMP/`` and renames the restored one into place. It never
deletes. The caller holds the state directory's run lock (no Switch serves meanwhile).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from enroll import audit, issuers
from enroll.errors import BackupInvalid, StoreError, StoreExists, StoreMissing
from enroll.issuers import IssuerRecord
from enroll.store.schema import SCHEMA_VERSION, TABLES
from enroll.store.sqlite import has_store

FORMAT = 1
MANIFEST = "switch-backup.json"
DB_MEMBER = "switch.db"
_KEY_MEMBER = re.compile(r"issuers/([a-z0-9][a-z0-9-]{0,62})/([A-Za-z0-9_-]{1,128})\.key")
BUSY_TIMEOUT_S = 10.0


@attrs.frozen
class Manifest:
    created_at: str
    schema_version: int
    rows: dict[str, int]
    audit_head: tuple[int, str]
    issuer_keys: tuple[str, ...]
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BackupInvalid(f"unknown backup format {raw.get('format')!r} (this Switch "
                                  f"reads format {FORMAT})")
            return cls(str(raw["created_at"]), int(raw["schema_version"]),
                       {str(k): int(v) for k, v in raw["rows"].items()},
                       (int(raw["audit_head"][0]), str(raw["audit_head"][1])),
                       tuple(str(k) for k in raw["issuer_keys"]))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise BackupInvalid(f"the backup's manifest is unreadable: {exc}") from exc


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        yield conn
    finally:
        conn.close()


def _describe(conn: sqlite3.Connection, what: str) -> tuple[int, dict[str, int], tuple[int, str],
                                                            list[IssuerRecord]]:
    """Check a database (integrity, the audit chain) and say what it holds: schema version, rows
    per table, the chain's head, the issuers."""
    check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    if check != ["ok"]:
        raise BackupInvalid(f"{what} is damaged: {'; '.join(check[:3])}")
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise BackupInvalid(f"{what} has schema version {version}, newer than this Switch "
                          f"understands ({SCHEMA_VERSION}): restore it with a newer Switch")
    held = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    # A backup from an older schema lacks the newer tables (the store migrates when opened).
    rows = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES
            if t in held}
    entries = (audit.entry_from_row(tuple(r)) for r in conn.execute(
        "SELECT seq, ts, actor, tenant, action, target, reason, details, prev_hash, hash"
        " FROM audit_log ORDER BY seq"))
    head_row = conn.execute("SELECT last_seq, last_hash FROM audit_head").fetchone()
    head = (int(head_row[0]), str(head_row[1]))
    verdict = audit.verify(entries, head)
    if not verdict.ok:
        raise BackupInvalid(f"the audit log in {what} does not verify: {verdict.problem}")
    found = [IssuerRecord(*r) for r in conn.execute(
        "SELECT id, tenant, seq, cert_pem, key_path, sha256, not_before, not_after, created_at,"
        " retired_at FROM issuers ORDER BY tenant, seq")]
    return version, rows, head, found


def _key_member(issuer: IssuerRecord) -> str:
    member = f"issuers/{issuer.tenant}/{issuer.id}.key"
    if not _KEY_MEMBER.fullmatch(member):
        raise BackupInvalid(f"issuer {issuer.id!r} of tenant {issuer.tenant!r} has a name no "
                          "backup can hold")
    return member


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    archive.addfile(info, io.BytesIO(data))


def backup(db_path: Path, out: Path, *, now: dt.datetime) -> Manifest:
    """Archive the store at ``db_path`` (which may be serving) and its issuers' keys into
    ``out`` (replaced atomically when it exists); the manifest of what it holds."""
    if not has_store(db_path):
        raise StoreMissing(f"there is no store at {db_path}")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".switch-backup-", dir=out.parent) as scratch:
        copy = Path(scratch) / DB_MEMBER
        try:
            with _connect(db_path) as source, _connect(copy) as target:
                source.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                # One step (pages=-1): one read transaction, so one consistent snapshot of the
                # database and its WAL, whatever is committed while it runs.
                source.backup(target, pages=-1)
                target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                # Console sessions are not backed up: a restore never revives one that was
                # signed out since (everyone signs in again).
                if target.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND"
                                  " name = 'console_sessions'").fetchone():
                    target.execute("DELETE FROM console_sessions")
            with _connect(copy) as conn:
                version, rows, head, found = _describe(conn, f"the copy of {db_path}")
        except sqlite3.Error as exc:
            raise BackupInvalid(f"cannot copy the store {db_path}: {exc}") from exc
        manifest = Manifest(now.isoformat(timespec="seconds"), version, rows, head,
                            tuple(_key_member(i) for i in found))
        partial = out.with_name(f".{out.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as archive:
                    _add(archive, MANIFEST, manifest.to_json())
                    _add(archive, DB_MEMBER, copy.read_bytes())
                    for issuer, member in zip(found, manifest.issuer_keys, strict=True):
                        try:
                            key = Path(issuer.key_path).read_bytes()
                        except OSError as exc:
                            raise BackupInvalid(f"cannot read the key of issuer {issuer.id} "
                                              f"({issuer.key_path}): {exc.strerror}") from exc
                        _add(archive, member, key)
                raw.flush()
                os.fsync(raw.fileno())
            partial.replace(out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
    return manifest


def _unpack(archive_path: Path, scratch: Path) -> Manifest:
    """Extract an archive's members, refusing any name a backup does not hold."""
    try:
        with tarfile.open(archive_path, mode="r:*") as archive:
            members = archive.getmembers()
            names = [m.name for m in members]
            for member in members:
                if not member.isfile() or not (member.name in (MANIFEST, DB_MEMBER)
                                               or _KEY_MEMBER.fullmatch(member.name)):
                    raise BackupInvalid(f"{archive_path} is not a Switch backup: it holds "
                                      f"{member.name!r}")
                if names.count(member.name) > 1:
                    raise BackupInvalid(f"{archive_path} holds {member.name!r} twice")
            if MANIFEST not in names or DB_MEMBER not in names:
                raise BackupInvalid(f"{archive_path} is not a Switch backup (no {MANIFEST} or "
                                  f"{DB_MEMBER})")
            for member in members:
                target = scratch / member.name
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupInvalid(f"cannot read the backup {archive_path}: {exc}") from exc
    return Manifest.from_json((scratch / MANIFEST).read_bytes())


def _check(scratch: Path, manifest: Manifest, archive_path: Path, keys_dir: Path) -> None:
    """The unpacked store is the one the manifest describes, and each issuer's key is there and
    belongs to its certificate; key paths are rewritten to where the keys will be."""
    what = f"the store in {archive_path}"
    try:
        with _connect(scratch / DB_MEMBER) as conn:
            _, rows, head, found = _describe(conn, what)
            if rows != manifest.rows or head != manifest.audit_head:
                raise BackupInvalid(f"{what} is not the one its manifest describes (rows "
                                  f"{rows} against {manifest.rows})")
            for issuer in found:
                member = _key_member(issuer)
                key_file = scratch / member
                if not key_file.exists():
                    raise BackupInvalid(f"{archive_path} lacks the key of issuer {issuer.id}")
                key = issuers.issuer_key_from_pem(issuer.id, key_file.read_bytes(),
                                                  where=str(archive_path))
                if key.public_key() != issuer.certificate().public_key():
                    raise BackupInvalid(f"the key of issuer {issuer.id} in {archive_path} does "
                                      "not belong to its certificate")
                conn.execute("UPDATE issuers SET key_path = ? WHERE id = ?",
                             (str(keys_dir / issuer.tenant / f"{issuer.id}.key"), issuer.id))
    except sqlite3.Error as exc:
        raise BackupInvalid(f"cannot read {what}: {exc}") from exc
    except StoreError as exc:
        if isinstance(exc, BackupInvalid):
            raise
        raise BackupInvalid(exc.message) from exc


def inspect(archive_path: Path) -> Manifest:
    """Check an archive completely, changing nothing; its manifest."""
    with tempfile.TemporaryDirectory(prefix=".switch-inspect-") as scratch:
        manifest = _unpack(archive_path, Path(scratch))
        _check(Path(scratch), manifest, archive_path, Path(scratch) / "issuers")
    return manifest


def restore(archive_path: Path, db_path: Path, *, replace: bool, now: dt.datetime
            ) -> tuple[Manifest, Path | None]:
    """Put the archive's store and issuer keys in place of ``db_path`` and ``issuers/`` beside
    it. A store there now is refused (``StoreExists``) unless ``replace``, which moves it aside.
    Returns the manifest and where what was there went (None: nothing was)."""
    state_dir = db_path.parent
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if has_store(db_path) and not replace:
        raise StoreExists(f"{state_dir} already has a store ({db_path}): restoring would "
                          "replace it; add --replace to move it aside first")
    keys_dir = state_dir / "issuers"
    with tempfile.TemporaryDirectory(prefix=".switch-restore-", dir=state_dir) as tmp:
        scratch = Path(tmp)
        manifest = _unpack(archive_path, scratch)
        _check(scratch, manifest, archive_path, keys_dir)
        aside = _move_aside(state_dir, db_path, keys_dir, now)
        (scratch / DB_MEMBER).replace(db_path)
        if (scratch / "issuers").exists():
            (scratch / "issuers").replace(keys_dir)
        _fsync_dir(state_dir)
    return manifest, aside


def _move_aside(state_dir: Path, db_path: Path, keys_dir: Path, now: dt.datetime) -> Path | None:
    """Move the store's files and the issuer keys there now into ``replaced-TIMESTAMP/``."""
    there = [p for p in (db_path, db_path.with_name(db_path.name + "-wal"),
                         db_path.with_name(db_path.name + "-shm"), keys_dir) if p.exists()]
    if not there:
        return None
    aside = state_dir / f"replaced-{now.strftime('%Y%m%dT%H%M%SZ')}"
    aside.mkdir(mode=0o700)
    for path in there:
        path.replace(aside / path.name)
    return aside


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def summary(manifest: Manifest) -> dict[str, Any]:
    """What a command prints about a backup."""
    return {"created_at": manifest.created_at, "schema_version": manifest.schema_version,
            "certificates": manifest.rows.get("certificates", 0),
            "keys": manifest.rows.get("provisioning_keys", 0),
            "issuers": manifest.rows.get("issuers", 0),
            "audit_entries": manifest.audit_head[0]}
