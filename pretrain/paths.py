"""Confine paths and URLs that come from untrusted parameters to a data root and known schemes.

Trust boundary: a flow run created from a Prefect deployment (the UI, the API, a
schedule) takes its parameters from whoever can reach the Prefect API, so its
paths must stay under the data root and its URLs must use an allowed scheme. A
flow called directly (``pretrain ingest ...``, a script, a test) runs with the
permissions of the local user who typed the arguments; those are not confined.
Setting ``PRETRAIN_DATA_ROOT`` confines every run on that machine, direct ones too.

The root and the schemes come from the environment of the process that runs the
flow (the operator's settings), never from a parameter, so a parameter cannot
widen them:

* ``PRETRAIN_DATA_ROOT``: the folder everything must stay under; default: the
  working directory of the process (a Prefect worker's project folder).
* ``PRETRAIN_URL_SCHEMES``: comma-separated; default ``http,https,s3,s3a``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DATA_ROOT_ENV = "PRETRAIN_DATA_ROOT"
URL_SCHEMES_ENV = "PRETRAIN_URL_SCHEMES"
DEFAULT_URL_SCHEMES = ("http", "https", "s3", "s3a")


class UnsafePathError(ValueError):
    """A parameter points outside the data root or uses a scheme that is not allowed."""


def is_url(value: str) -> bool:
    """True for ``scheme://...`` with a scheme longer than a drive letter (``file://`` included)."""
    scheme = urlsplit(value).scheme
    return len(scheme) > 1 and "://" in value


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, for logs, reports and errors."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


@dataclass(frozen=True)
class PathPolicy:
    """Where untrusted paths may point (``root``) and which URL schemes they may use."""

    root: Path
    url_schemes: tuple[str, ...] = DEFAULT_URL_SCHEMES

    def path(self, value: str | os.PathLike, field: str) -> Path:
        """``value`` (relative to the root, or absolute) resolved; it must stay under the root."""
        text = os.fspath(value)
        if not text or "\x00" in text:
            raise UnsafePathError(f"{field}: {text!r} is not a usable path")
        if text.startswith("~"):
            raise UnsafePathError(f"{field}: {text!r}: home-relative paths are not allowed here; "
                                  f"give a path under the data root {self.root}")
        root = self.root.resolve()
        candidate = Path(text) if os.path.isabs(text) else root / text
        resolved = candidate.resolve()  # follows symlinks of the parts that exist
        if not resolved.is_relative_to(root):
            raise UnsafePathError(f"{field}: {text!r} resolves to {resolved}, outside the data root {root} "
                                  f"(set {DATA_ROOT_ENV} on the worker to change the root)")
        return resolved

    def pattern(self, value: str, field: str) -> str:
        """A glob pattern: no ``..`` part, and its fixed prefix under the root; returns it absolute."""
        if ".." in Path(value).parts:
            raise UnsafePathError(f"{field}: {value!r}: '..' is not allowed in a pattern")
        fixed = []
        for part in Path(value).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        prefix = self.path(os.path.join(*fixed) if fixed else ".", field)
        rest = Path(value).parts[len(fixed):]
        return str(prefix.joinpath(*rest))

    def url(self, value: str, field: str) -> str:
        """A URL with an allowed scheme, a host, and no credentials in it."""
        parts = urlsplit(value)
        if parts.scheme.lower() not in self.url_schemes:
            raise UnsafePathError(f"{field}: URL scheme {parts.scheme!r} of {redact_url(value)!r} is not allowed "
                                  f"(allowed: {', '.join(self.url_schemes)}; set {URL_SCHEMES_ENV} to change)")
        if not parts.netloc:
            raise UnsafePathError(f"{field}: {value!r} has no host")
        if "@" in parts.netloc:
            raise UnsafePathError(f"{field}: {redact_url(value)!r} carries credentials; they would be stored with "
                                  "the run's parameters. Give them through the environment or a Prefect Secret block")
        return value

    def location(self, value: str, field: str) -> str:
        """A local path, glob or ``file://`` path (confined), or a URL (scheme checked)."""
        if is_url(value) and urlsplit(value).scheme.lower() != "file":
            return self.url(value, field)
        local = value.removeprefix("file://")
        return self.pattern(local, field) if glob.has_magic(local) else str(self.path(local, field))


def policy_from_env(environ: os._Environ | dict | None = None) -> PathPolicy:
    """The operator's policy: root from ``PRETRAIN_DATA_ROOT`` (else the working directory), schemes."""
    env = os.environ if environ is None else environ
    root = Path(env.get(DATA_ROOT_ENV) or os.getcwd())
    schemes = tuple(s.strip().lower() for s in env.get(URL_SCHEMES_ENV, "").split(",") if s.strip())
    return PathPolicy(root=root, url_schemes=schemes or DEFAULT_URL_SCHEMES)


def root_is_configured(environ: os._Environ | dict | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(DATA_ROOT_ENV))


def require_folder(folder: str | Path, what: str) -> Path:
    """``folder`` if it is an existing folder; else FileNotFoundError saying that it does not exist (or is a file)."""
    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: the folder does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path}: not a folder (give the folder that holds the shards)")
    return path


def parquet_files(folder: str | Path) -> list[Path]:
    """The ``*.parquet`` files of an input folder, sorted (temporary ``.*.part`` files never match).

    None at all, or one that is not a regular file (a named pipe would block its reader forever),
    is an error naming the folder or the files.
    """
    shards = sorted(require_folder(folder, "input").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no Parquet shards (*.parquet) in {folder}")
    irregular = [str(path) for path in shards if not path.is_file()]
    if irregular:
        raise ValueError(f"input shards that are not regular files (a named pipe, a device or a folder): {irregular}")
    return shards
