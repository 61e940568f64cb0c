"""Data roots as local paths or object-store URIs, through ``pyarrow.fs``.

``as_path(x)`` is the one door: a plain path or ``file://`` URI gives a ``pathlib.Path`` (the
local file system, with rename and fsync, as before); ``s3://bucket/prefix`` (and any other
scheme ``pyarrow.fs.FileSystem.from_uri`` knows: ``gs://``, ``abfs://``, ``hdfs://``) gives a
``StorePath``, which answers the part of ``pathlib``'s API the factory uses (``/``, ``name``,
``parent``, ``is_file``, ``read_text``, ``glob``, ``rename``, ...) against the store. Code that
hands a path to a library that needs a local file (a model loader, ``open``) asks ``local_copy``
or ``localize`` first: a ``StorePath`` has no ``__fspath__``, so a forgotten case fails loudly
instead of writing a local folder named ``s3:``.

Credentials never pass through the factory: pyarrow reads them from the standard places
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``~/.aws``, an instance
or pod role). The endpoint of an S3-compatible server comes from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, the region from ``AWS_REGION``/``AWS_DEFAULT_REGION``. A data root URI
with credentials or options in it (``user@``, ``?...``) is refused (``bad_uri``), so no secret
can reach ``config.json``, a marker or a log line through it.

Object stores have no rename: ``StorePath.write_bytes`` and ``open("wb")`` upload whole, and
the object appears only when the upload completes (S3 PUT and multipart completion are
atomic), which is the guarantee ``infra.storage.atomic_write`` gives on a local disk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import threading
import urllib.parse
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Iterator, Union

try:
    import pyarrow.fs as pafs
except ImportError:  # the vLLM worker environment without pyarrow: local paths only
    pafs = None

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_FS: dict[str, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


class StoreError(OSError):
    """An object-store data root is malformed or cannot be reached; the message names it."""


def is_uri(x) -> bool:
    """True for an object-store URI (``s3://...``; not a plain path, not ``file://``)."""
    if isinstance(x, StorePath):
        return True
    m = _URI.match(str(x)) if isinstance(x, str) else None
    return bool(m) and m.group(1).lower() != "file"


def bad_uri(x: str) -> str | None:
    """Why ``x`` cannot be a data root URI (credentials or options in it, no bucket), or None."""
    m = _URI.match(x)
    if not m or m.group(1).lower() == "file":
        return None
    parsed = urllib.parse.urlsplit(x)
    if "@" in parsed.netloc or parsed.password or parsed.username:
        return "it holds credentials (user@); give them through the environment (AWS_ACCESS_KEY_ID, ...), never the config"
    if parsed.query or parsed.fragment:
        return "it holds options (?...); set the endpoint with AWS_ENDPOINT_URL and the region with AWS_REGION"
    if not parsed.netloc:
        return "it names no bucket (s3://BUCKET/prefix)"
    return None


def redact(x: str) -> str:
    """``x`` with any credentials and options cut out (``s3://***@bucket/x?***``), for messages."""
    parsed = urllib.parse.urlsplit(x)
    if not _URI.match(x):
        return x
    host = parsed.netloc.rsplit("@", 1)[-1]
    return f"{parsed.scheme}://{'***@' if '@' in parsed.netloc else ''}{host}{parsed.path}{'?***' if parsed.query else ''}"


def as_path(x) -> Union[Path, "StorePath"]:
    """``x`` (a str, ``Path`` or ``StorePath``) as a ``Path`` (local) or a ``StorePath`` (URI)."""
    if isinstance(x, (Path, StorePath)):
        return x
    s = os.fspath(x) if not isinstance(x, str) else x
    m = _URI.match(s)
    if not m:
        return Path(s)
    if m.group(1).lower() == "file":
        return Path(urllib.parse.urlsplit(s).path)
    why = bad_uri(s)
    if why:
        raise StoreError(f"data root {redact(s)!r} cannot be used: {why}")
    return StorePath(m.group(1).lower(), m.group(2).strip("/"))


def filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    """The ``pyarrow.fs`` file system of ``scheme`` (one per process and scheme)."""
    with _FS_LOCK:
        if scheme not in _FS:
            try:
                if scheme == "s3":
                    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                    kw = {"endpoint_override": endpoint} if endpoint else {}
                    if region:
                        kw["region"] = region
                    _FS[scheme] = pafs.S3FileSystem(**kw)
                else:
                    _FS[scheme] = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]
            except (OSError, ValueError, ImportError) as e:
                raise StoreError(f"cannot open the {scheme}:// file system: {e}") from None
        return _FS[scheme]


def reset_filesystems() -> None:
    """Forget the file systems built so far (after the environment's endpoint changed)."""
    with _FS_LOCK:
        _FS.clear()


@dataclass
class _Snapshot:
    prefix: str
    files: dict  # key -> pafs.FileInfo
    dirs: set
    reads: dict = field(default_factory=dict)  # key -> bytes of the JSON records read so far

    def covers(self, key: str) -> bool:
        return key == self.prefix or key.startswith(self.prefix + "/")


_SNAP: ContextVar[_Snapshot | None] = ContextVar("sphere_store_snapshot", default=None)


@contextmanager
def snapshot(prefix) -> Iterator[None]:
    """A read-only view of everything under ``prefix`` for the block: existence, sizes and
    listings come from one recursive listing taken at its start, and each JSON record is
    fetched once, so a reader's walk over a run (``sphere query``, a report, an export) costs
    a few requests instead of several per file. Data is still only what the markers commit:
    markers are written after their parts, so a listing that shows a marker shows its part.
    A local path, or a block inside another snapshot, changes nothing. Writing under ``prefix``
    inside the block is a programming error (``RuntimeError``)."""
    p = as_path(prefix)
    if not isinstance(p, StorePath) or _SNAP.get() is not None:
        yield
        return
    files, dirs = {}, {p.key}
    depth = len(p.key.split("/"))
    for info in p._list(True):
        key = info.path.rstrip("/")
        parts = key.split("/")
        dirs.update("/".join(parts[:j]) for j in range(depth, len(parts)))
        if info.type == pafs.FileType.File:
            files[key] = info
        else:
            dirs.add(key)
    token = _SNAP.set(_Snapshot(p.key, files, dirs))
    try:
        yield
    finally:
        _SNAP.reset(token)


# The writer's cache. While a process holds a run's writer lock (``infra.locks.run_lock``) it is
# the only writer of that run, so what it has learnt about the run's keys stays true until it
# changes them itself: existence and size of every key it looked up or wrote (absence too), and
# the bytes of every JSON record. Every change it makes goes through ``StorePath`` and updates
# the cache. This turns the several requests per marker of a run's bookkeeping into one.
_WRITING: dict[str, int] = {}  # prefix -> how many holders in this process
_KNOWN: dict[str, object] = {}  # key -> pafs.FileInfo (NotFound included)
_BODY: dict[str, bytes] = {}
_CACHE_LOCK = threading.RLock()


@contextmanager
def writer_cache(prefix) -> Iterator[None]:
    """Cache lookups under ``prefix`` for the block (call only while holding its writer lock)."""
    p = as_path(prefix)
    if not isinstance(p, StorePath):
        yield
        return
    with _CACHE_LOCK:
        _WRITING[p.key] = _WRITING.get(p.key, 0) + 1
    try:
        yield
    finally:
        with _CACHE_LOCK:
            _WRITING[p.key] -= 1
            if not _WRITING[p.key]:
                del _WRITING[p.key]
                for k in [k for k in _KNOWN if k.startswith(p.key + "/")]:
                    _KNOWN.pop(k, None)
                    _BODY.pop(k, None)


def _cached(key: str) -> bool:
    return any(key.startswith(p + "/") for p in _WRITING)


def _forget(key: str, below: bool = False) -> None:
    """What the cache knows of ``key`` (and, ``below``, of every key under it) is no longer true."""
    with _CACHE_LOCK:
        for k in ([k for k in _KNOWN if k == key or k.startswith(key + "/")] if below else [key]):
            _KNOWN.pop(k, None)
            _BODY.pop(k, None)


def _snap_for(key: str) -> _Snapshot | None:
    snap = _SNAP.get()
    return snap if snap is not None and snap.covers(key) else None


def _no_write(path: StorePath) -> None:
    if _snap_for(path.key) is not None:
        raise RuntimeError(f"{path} written inside a read-only snapshot of {_SNAP.get().prefix}")


@dataclass(frozen=True, order=True)
class StorePath:
    """A key (``bucket/prefix/...``) in an object store, with the ``pathlib`` subset the factory
    uses. Folders are implicit: ``mkdir`` does nothing and a folder exists while it holds a key."""

    scheme: str
    key: str

    # -- pure path -----------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __truediv__(self, other) -> StorePath:
        other = str(other).strip("/")
        return StorePath(self.scheme, f"{self.key}/{other}" if other else self.key)

    def joinpath(self, *others) -> StorePath:
        p = self
        for o in others:
            p = p / o
        return p

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> StorePath:
        return StorePath(self.scheme, self.key.rsplit("/", 1)[0]) if "/" in self.key else self

    @property
    def parents(self) -> list[StorePath]:
        out, p = [], self
        while "/" in p.key:
            p = p.parent
            out.append(p)
        return out

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self.scheme}://", *self.key.split("/"))

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> StorePath:
        return self.with_name(self.stem + suffix)

    def relative_to(self, other) -> PurePosixPath:
        other = as_path(other)
        if not isinstance(other, StorePath) or other.scheme != self.scheme or not (self.key + "/").startswith(other.key + "/"):
            raise ValueError(f"{self} is not inside {other}")
        return PurePosixPath(self.key[len(other.key):].lstrip("/") or ".")

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> StorePath:
        return self

    absolute = expanduser = resolve

    def is_absolute(self) -> bool:
        return True

    # -- the store -----------------------------------------------------------------------------
    def check_reachable(self) -> StorePath:
        """This path if its bucket exists and answers; ``StoreError`` saying which of the two
        failed (no credentials, no bucket, no server at the endpoint) otherwise."""
        bucket = self.key.split("/", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"
        try:
            kind = self.fs.get_file_info(bucket).type
        except OSError as e:
            raise StoreError(f"the data root {self} cannot be reached ({self.scheme} at {endpoint}): {str(e).splitlines()[0]}") from None
        if kind == pafs.FileType.NotFound:
            raise StoreError(f"the data root {self} cannot be used: bucket {bucket!r} does not exist at {endpoint} "
                             "(or these credentials cannot see it); create it first")
        return self

    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem(self.scheme, self.key.split("/", 1)[0])

    def _info(self) -> pafs.FileInfo:
        snap = _snap_for(self.key)
        if snap is not None:
            if self.key in snap.files:
                return snap.files[self.key]
            return pafs.FileInfo(self.key, pafs.FileType.Directory if self.key in snap.dirs else pafs.FileType.NotFound)
        cached = _cached(self.key)
        if cached and self.key in _KNOWN:
            return _KNOWN[self.key]
        try:
            info = self.fs.get_file_info(self.key)
        except OSError as e:
            raise StoreError(f"{self} cannot be read: {e}") from None
        if cached and info.type != pafs.FileType.Directory:
            _KNOWN[self.key] = info
        return info

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> SimpleNamespace:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such object", str(self))
        return SimpleNamespace(st_size=info.size or 0, st_mtime_ns=info.mtime_ns or 0, st_ino=0,
                               st_mtime=(info.mtime_ns or 0) / 1e9)

    def read_bytes(self) -> bytes:
        snap = _snap_for(self.key)
        if snap is not None:
            if self.key not in snap.files:
                raise FileNotFoundError(2, "No such object", str(self))
            if self.key in snap.reads:
                return snap.reads[self.key]
        cached = _cached(self.key) and self.key.endswith(".json")
        if cached and self.key in _BODY:
            return _BODY[self.key]
        data = self._read_bytes()
        if snap is not None and self.key.endswith(".json"):
            snap.reads[self.key] = data
        if cached:
            _BODY[self.key] = data
        return data

    def _read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.key) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(2, "No such object", str(self)) from None
        except OSError as e:
            if "not found" in str(e).lower() or "nosuchkey" in str(e).lower():
                raise FileNotFoundError(2, "No such object", str(self)) from None
            raise

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> int:
        _no_write(self)
        _forget(self.key)
        with self.fs.open_output_stream(self.key) as f:
            f.write(data)
        if _cached(self.key) and self.key.endswith(".json"):
            _BODY[self.key] = bytes(data)
        return len(data)

    def upload(self, local: Path) -> StorePath:
        """Upload the local file ``local`` whole to this key (it appears when the upload completes)."""
        _no_write(self)
        _forget(self.key)
        with open(local, "rb") as src, self.fs.open_output_stream(self.key) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return self

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "r", encoding: str | None = None, **_):
        if mode in ("rb", "r"):
            raw = self.fs.open_input_file(self.key)
            return raw if mode == "rb" else io.TextIOWrapper(raw, encoding=encoding or "utf-8")
        if mode in ("wb", "w"):
            _no_write(self)
            _forget(self.key)
            raw = self.fs.open_output_stream(self.key)
            return raw if mode == "wb" else io.TextIOWrapper(raw, encoding=encoding or "utf-8")
        raise ValueError(f"{self}: mode {mode!r} is not supported on an object store (whole objects only)")

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Folders are implicit in an object store."""

    def unlink(self, missing_ok: bool = False) -> None:
        _no_write(self)
        _forget(self.key)
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError as e:
            if not (missing_ok and "not found" in str(e).lower()):
                raise

    def rmdir(self) -> None:
        _forget(self.key, below=True)
        if any(True for _ in self.iterdir()):
            raise OSError(39, "Directory not empty", str(self))
        self.fs.delete_dir(self.key)

    def rmtree(self) -> None:
        """Delete everything under this prefix (no error when there is nothing)."""
        _forget(self.key, below=True)
        if self.is_dir():
            self.fs.delete_dir(self.key)

    def rename(self, target) -> StorePath:
        """Copy then delete (not atomic on an object store; used only to move data aside)."""
        target = as_path(target)
        _no_write(self)
        if self.is_dir():  # a folder is its keys: each is moved
            for info in self._list(True):
                if info.type == pafs.FileType.File:
                    self.fs.move(info.path, f"{target.key}/{info.path[len(self.key):].strip('/')}")
            self.rmtree()
        else:
            self.fs.move(self.key, target.key)
        _forget(self.key, below=True)
        _forget(target.key, below=True)
        return target

    replace = rename

    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        snap = _snap_for(self.key)
        if snap is not None:
            base = self.key + "/"
            keys = [k for k in (*snap.files, *snap.dirs) if k.startswith(base) and (recursive or "/" not in k[len(base):])]
            return [snap.files.get(k) or pafs.FileInfo(k, pafs.FileType.Directory) for k in sorted(set(keys))]
        try:
            return self.fs.get_file_info(pafs.FileSelector(self.key, recursive=recursive, allow_not_found=True))
        except OSError as e:
            raise StoreError(f"{self} cannot be listed: {e}") from None

    def iterdir(self) -> Iterator[StorePath]:
        for info in self._list(False):
            yield StorePath(self.scheme, info.path.rstrip("/"))

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Keys under this prefix whose relative path matches ``pattern`` segment by segment
        (``*`` within one segment, as ``pathlib``'s ``glob``)."""
        want = pattern.strip("/").split("/")
        infos = self._list(len(want) > 1)
        for info in infos:
            rel = info.path[len(self.key):].strip("/").split("/")
            if len(rel) == len(want) and all(fnmatch.fnmatchcase(r, w) for r, w in zip(rel, want)):
                yield StorePath(self.scheme, info.path.rstrip("/"))

    def rglob(self, pattern: str) -> Iterator[StorePath]:
        for info in self._list(True):
            if fnmatch.fnmatchcase(info.path.rstrip("/").rsplit("/", 1)[-1], pattern):
                yield StorePath(self.scheme, info.path.rstrip("/"))


AnyPath = Union[Path, StorePath]


def cache_root() -> Path:
    """Where object-store data is cached on this host (``$SPHERE_CACHE``, else a folder under
    the user's cache directory)."""
    base = os.environ.get("SPHERE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                          "sphere-factory")
    return Path(base)


def upload_dir(local: Path, dest: StorePath) -> list[str]:
    """Copy every file under the local folder ``local`` to ``dest`` (relative layout kept) and
    write ``dest/_files.json`` last: the file list with sizes and sha256, which ``localize``
    checks the copy it makes against. Returns the relative names uploaded."""
    files = {}
    for f in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        rel = f.relative_to(local).as_posix()
        _forget((dest / rel).key)
        with open(f, "rb") as src, dest.fs.open_output_stream((dest / rel).key) as out:
            h = hashlib.sha256()
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        files[rel] = {"size": f.stat().st_size, "sha256": h.hexdigest()}
    (dest / FILES).write_text(json.dumps({"files": files}, sort_keys=True))
    return list(files)


FILES = "_files.json"
_LOCALIZED: dict[str, Path] = {}
_LOCALIZE_LOCK = threading.Lock()


def localize(path) -> str:
    """A local folder holding ``path``'s files: ``path`` itself when it is local; for a URI, a
    copy in ``cache_root()/models/<hash of the URI and its file list>``, made once per process
    (and kept across processes), each file checked against the sha256 in ``_files.json``
    (``StoreError`` naming the file when one does not match)."""
    p = as_path(path)
    if not isinstance(p, StorePath):
        return str(path)
    with _LOCALIZE_LOCK:
        if str(p) in _LOCALIZED:
            return str(_LOCALIZED[str(p)])
        try:
            listing = json.loads((p / FILES).read_text())["files"]
        except FileNotFoundError:
            raise StoreError(f"{p} holds no {FILES}: it is not a complete model folder written by the factory") from None
        digest = hashlib.sha256((str(p) + json.dumps(listing, sort_keys=True)).encode()).hexdigest()[:20]
        dest = cache_root() / "models" / digest
        if not (dest / FILES).is_file():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for rel, meta in listing.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with p.fs.open_input_stream((p / rel).key) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        h.update(block)
                        out.write(block)
                if h.hexdigest() != meta["sha256"]:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise StoreError(f"{p / rel} does not match its recorded sha256: the model on the store is damaged; "
                                     "train it again (sphere rerun <run> --stage train)")
            (tmp / FILES).write_text(json.dumps({"files": listing, "source": str(p)}, sort_keys=True))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        _LOCALIZED[str(p)] = dest
        return str(dest)


def lock_file(path: AnyPath) -> Path:
    """The local file that stands for ``path``'s writer lock: ``path`` itself when local; for a
    store key, a file under ``cache_root()/locks`` (object stores have no locks: the lock keeps
    writers on this host apart, not writers on two hosts)."""
    if not isinstance(path, StorePath):
        return Path(path)
    return cache_root() / "locks" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:16]}-{path.name}"
