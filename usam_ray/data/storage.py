"""Where source files live: a local (or mounted) path, or a URI read through a pyarrow filesystem.

``resolve`` turns what the user wrote into a ``Location``: a pyarrow ``FileSystem``, the path
inside it and the text to show. Local paths use pyarrow's ``LocalFileSystem``; a URI uses
``pyarrow.fs.FileSystem.from_uri`` (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, ``file://`` as
the installed pyarrow supports them, with their query options such as ``?endpoint_override=``)
and otherwise any protocol fsspec knows (wrapped by ``pyarrow.fs.FSSpecHandler``). Credentials come
from each filesystem's usual chain (environment, instance role), in every process that reads.

A ``Location`` pickles (the filesystem with it), so Ray read tasks open files through the same
filesystem the driver listed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


class StorageError(ValueError):
    """A location that cannot be resolved or read; the message names it."""


def is_uri(text: str) -> bool:
    """True for ``scheme://…`` (a URI), False for a plain path."""
    return bool(_URI.match(str(text)))


@dataclass(frozen=True)
class Location:
    """A folder or file on some filesystem.

    Attributes:
        filesystem (pyarrow.fs.FileSystem): where it lives.
        path (str): the path inside ``filesystem`` (``bucket/key`` on S3, absolute on local disk).
        text (str): how the user wrote it, normalised: the absolute local path, or the URI
            without its query string (never shows credentials).
    """

    filesystem: pafs.FileSystem
    path: str
    text: str

    def show(self, path: str) -> str:
        """The user-facing name of ``path`` (a path inside this location's filesystem): the local
        path itself, or this location's URI with the part below it appended."""
        if path == self.path:
            return self.text
        root = self.path.rstrip("/") + "/"
        return self.text.rstrip("/") + "/" + path[len(root):] if path.startswith(root) else path

    def kind(self, path: str | None = None) -> pafs.FileType:
        """File, Directory or NotFound for ``path`` (default: this location)."""
        return self.filesystem.get_file_info(self.path if path is None else path).type

    def files(self) -> list[str]:
        """Every file below this folder (recursive; symlinked folders followed on local disk), as
        paths inside the filesystem, sorted; files and folders whose name starts with ``.`` below the
        root are left out."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=True))
        root = self.path.rstrip("/") + "/"
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(root):] if info.path.startswith(root) else info.path
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            out.append(info.path)
        return sorted(out)

    def relative(self, path: str) -> str:
        """``path`` relative to this folder, with ``/`` separators."""
        root = self.path.rstrip("/") + "/"
        return path[len(root):] if path.startswith(root) else path

    def read_bytes(self, path: str) -> bytes:
        """The whole file at ``path`` (inside the filesystem)."""
        with self.filesystem.open_input_file(path) as fh:
            return fh.read()


def local(path: str | os.PathLike) -> Location:
    """A ``Location`` on local disk (``~`` expanded, made absolute)."""
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    return Location(pafs.LocalFileSystem(), absolute, absolute)


def resolve(text: str) -> Location:
    """A ``Location`` for a local path or a URI.

    Raises:
        StorageError: the scheme is known neither to pyarrow nor to fsspec, or the filesystem
            could not be set up (the message names the URI and the reason).
    """
    if not is_uri(text):
        return local(text)
    shown = text.split("?", 1)[0]
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow: ArrowInvalid (unknown scheme) or OSError (e.g. no network)
        scheme = text.split("://", 1)[0]
        try:
            import fsspec
            from fsspec.core import url_to_fs
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError):
            raise StorageError(f"{shown}: cannot open ({exc})") from exc
        try:
            spec_fs, path = url_to_fs(text)
        except Exception as exc2:
            raise StorageError(f"{shown}: cannot open through fsspec ({exc2})") from exc2
        filesystem = PyFileSystem(FSSpecHandler(spec_fs))
    return Location(filesystem, path.rstrip("/") or path, shown)
