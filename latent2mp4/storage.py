"""Object storage (s3://, gs://, az://, hf://, … through fsspec) behind the names the batch uses.

A URL becomes a `RemotePath`: it splits, joins and names itself like a `Path` (so output naming,
--out-dir mirroring and the messages are the local batch's), and it reads and checks itself
through fsspec. fsspec and its protocol packages are imported only when a URL is used: the default
install has neither. Outputs are never written to a store piecemeal: ffmpeg writes a local file,
which is uploaded whole once it is complete (`local_output`), so no reader ever sees a partial
object under the final key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from latent2mp4.errors import Latent2Mp4Error, OutputError, UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
# The fsspec packages that serve the common protocols: what to tell a user who lacks one.
_PACKAGES = {"s3": "latent2mp4[s3]", "s3a": "latent2mp4[s3]", "gs": "gcsfs", "gcs": "gcsfs",
             "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}  # fmt: skip


# The batch code handles local paths and URLs alike; a RemotePath implements the part of Path
# it uses (naming, joining, exists, open for reading), so to the type checker it is one.
if TYPE_CHECKING:
    _PathBase = Path
else:
    _PathBase = PurePosixPath


class StorageError(Latent2Mp4Error):
    """A store that cannot be reached or refuses a request (credentials, endpoint, outage)."""


class RemotePath(_PathBase):
    """`scheme://bucket/key` held as the parts `scheme:`, `bucket`, `key…`, so `parent`, `/`,
    `stem`, `with_name` and `relative_to` work as on local paths."""

    def __str__(self) -> str:
        text = super().__str__()
        head, sep, rest = text.partition("/")
        return f"{head}//{rest}" if head.endswith(":") and sep else text

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __fspath__(self) -> str:  # never silently a local file named "s3:"
        raise TypeError(f"{self} is a URL, not a local path")

    @property
    def protocol(self) -> str:
        return self.parts[0].removesuffix(":")

    @property
    def fs(self) -> Any:
        return filesystem(self.protocol)

    def absolute(self) -> RemotePath:
        return self

    def resolve(self, strict: bool = False) -> RemotePath:
        return self

    def exists(self) -> bool:
        return bool(self._ask("exists"))

    def is_file(self) -> bool:
        return bool(self._ask("isfile"))

    def is_dir(self) -> bool:
        return bool(self._ask("isdir"))

    def _ask(self, what: str) -> Any:
        try:
            return getattr(self.fs, what)(str(self))
        except Exception as e:  # noqa: BLE001 - botocore, aiohttp, gcsfs… share no base
            raise StorageError(f"{self}: cannot reach the store ({_reason(e)})") from None

    def open(self, mode: str = "rb", buffering: int = -1, *args: Any, **kw: Any) -> Any:
        """Reads are ranged GETs of just what is asked (no read-ahead cache): latents are read
        a chunk's bytes at a time, as from a local file."""
        if mode != "rb":
            raise ValueError("remote files are opened for reading only; outputs are uploaded")
        return self.fs.open(str(self), "rb", cache_type="none")

    def size(self) -> int:
        return int(self._ask("size"))


def is_url(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, RemotePath) or bool(_SCHEME.match(str(text)))


def as_path(text: str | Path, flag: str = "") -> Path:
    """A local path, or a `RemotePath` for a URL whose protocol the installed packages serve;
    any other URL is a usage error (it would otherwise become a local folder named `s3:`)."""
    if isinstance(text, RemotePath):
        return text
    if isinstance(text, Path):
        # typer and pathlib collapse the `//` of a URL: s3://b/k arrives as the path s3:/b/k.
        parts = text.parts
        if parts and parts[0].endswith(":") and len(parts[0]) > 2:
            text = f"{parts[0]}//{'/'.join(parts[1:])}"
        else:
            return text
    match = _SCHEME.match(text)
    if match is None:
        return Path(text)
    protocol = match.group(1).lower()
    if protocol == "file":
        return Path(text[len("file://") :])
    check_protocol(protocol, f"{flag} {text}".strip())
    return RemotePath(f"{protocol}:", *[p for p in text[match.end() :].split("/") if p])


def check_protocol(protocol: str, what: str) -> None:
    try:
        import fsspec
    except ImportError:
        extra = _PACKAGES.get(protocol, "latent2mp4[s3]")
        raise UsageError(
            f"{what}: URLs need fsspec; install it with pip install '{extra}'"
        ) from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise UsageError(f"{what}: unknown URL scheme {protocol}://") from None
    except ImportError:
        package = _PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise UsageError(f"{what}: {protocol}:// needs pip install '{package}'") from None


@cache
def filesystem(protocol: str) -> Any:
    """One fsspec filesystem per protocol and process. Credentials and endpoint come from the
    protocol's standard environment (for S3: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, profiles…)."""
    import fsspec

    return fsspec.filesystem(protocol)


def list_inputs(
    spec: str, recursive: bool, suffixes: tuple[str, ...]
) -> tuple[list[RemotePath], RemotePath | None]:
    """The latent objects a URL names — a prefix (its objects; all levels with `recursive`), a
    glob, or one object — and the prefix they were found under (None for globs and objects).
    Hidden names (a leading dot) are left out of prefixes and globs."""
    base = as_path(spec)
    assert isinstance(base, RemotePath)
    fs, url = base.fs, str(base)
    proto = base.protocol

    def wanted(key: str, below: str) -> bool:
        rel = key[len(below) :].strip("/").split("/") if key.startswith(below) else [key]
        hidden = any(part.startswith(".") for part in rel)
        return not hidden and PurePosixPath(key).suffix.lower() in suffixes

    def url_of(key: str) -> RemotePath:
        return RemotePath(f"{proto}:", *[p for p in key.split("/") if p])

    strip = fs._strip_protocol
    if any(c in url for c in "*?["):
        keys = sorted(fs.glob(url))
        if not keys:
            raise UsageError(f"{spec}: no objects match this pattern")
        return [url_of(k) for k in keys if wanted(k, "") and fs.isfile(k)], None
    if fs.isdir(url):
        below = strip(url).rstrip("/") + "/"
        if recursive:
            keys = sorted(fs.find(url))
        else:
            keys = sorted(e["name"] for e in fs.ls(url, detail=True) if e["type"] == "file")
        return [url_of(k) for k in keys if wanted(k, below)], base
    return [base], None


@contextmanager
def local_copy(path: Path) -> Iterator[Path]:
    """A local file with `path`'s bytes, for formats that cannot be read by ranges (pickles,
    .npz): a remote object is fetched once into a temporary file, removed afterwards."""
    if not isinstance(path, RemotePath):
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="latent2mp4-in-"))
    try:
        local = folder / path.name
        path.fs.get_file(str(path), str(local))
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_remote_output(path: RemotePath, overwrite: bool) -> None:
    if not overwrite and path.exists():
        raise OutputError(
            f"{path}: output exists; pass --overwrite to replace it or --skip-existing"
        )


@contextmanager
def local_output(path: Path, overwrite: bool) -> Iterator[Path]:
    """Where to write `path` from: itself when local; for a URL, a file in a private local
    folder that is uploaded whole when the body succeeds. The folder is removed in every case,
    and a failed upload leaves no object under `path`'s key."""
    if not isinstance(path, RemotePath):
        yield path
        return
    check_remote_output(path, overwrite)
    folder = Path(tempfile.mkdtemp(prefix="latent2mp4-out-"))
    try:
        local = folder / path.name
        yield local
        upload(local, path, overwrite)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def upload(local: Path, path: RemotePath, overwrite: bool) -> None:
    try:
        appeared = not overwrite and path.fs.exists(str(path))
        if not appeared:
            # One PUT (or one multipart upload, completed last): the object appears whole or
            # not at all. s3fs retries transient errors itself before this fails.
            path.fs.put_file(str(local), str(path))
    except Exception as e:  # noqa: BLE001 - botocore, aiohttp and OS errors share no base
        _remove_quietly(path)
        why = _reason(e)
        raise OutputError(f"{path}: upload failed ({why}); nothing was written there") from None
    if appeared:
        raise OutputError(f"{path}: output appeared while decoding; kept the existing object")


def _remove_quietly(path: RemotePath) -> None:
    try:
        if path.exists():
            path.fs.rm_file(str(path))
    except Exception:  # noqa: BLE001 - the store is unreachable: there is nothing to remove
        pass


def _reason(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class RemoteReport:
    """--report on a store: rows go to a local copy at once, and the whole object is uploaded
    again at most every `every` seconds and when the run ends (object stores have no append).
    An existing report object is continued, as `--report FILE` appends to a local file."""

    def __init__(self, path: RemotePath, every: float = 2.0) -> None:
        self.path, self.every = path, every
        self.folder = Path(tempfile.mkdtemp(prefix="latent2mp4-report-"))
        self.local = self.folder / path.name
        self.last = 0.0
        try:
            if path.exists():
                path.fs.get_file(str(path), str(self.local))
            else:
                self.local.touch()
            self._put()
        except OSError as e:
            raise UsageError(f"--report {path}: cannot write ({_reason(e)})") from None
        except Exception as e:  # noqa: BLE001 - a store's refusal (credentials, no bucket)
            raise UsageError(f"--report {path}: cannot write ({_reason(e)})") from None

    def add(self, record: dict[str, object]) -> None:
        with self.local.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if time.monotonic() - self.last >= self.every:
            self._put()

    def close(self) -> None:
        try:
            self._put()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _put(self) -> None:
        try:
            self.path.fs.put_file(str(self.local), str(self.path))
        except Exception as e:  # noqa: BLE001
            raise OutputError(f"--report {self.path}: upload failed ({_reason(e)})") from None
        self.last = time.monotonic()
