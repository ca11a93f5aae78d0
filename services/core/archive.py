"""Checkpoint archives (.tar, .tar.gz, .zip) as they arrive from users: treated as hostile.

An import by upload (`POST /v1/registry/models/import` with a `file`) is an archive of a
hub-layout checkpoint directory. The gateway only sniffs its first bytes (`kind`), so a file that
is no archive is refused before anything is stored; the pipeline worker extracts it (`extract`)
into a directory of its own. Extraction takes regular files and directories only: an absolute
name, a `..` part, a link, a device or a fifo refuses the whole archive, and so do more than
`max_files` members or more than `max_bytes` extracted (counted on the bytes written, not on
what the headers claim). tarfile's `data` filter runs as well, as a second line. The caller
extracts into a temporary directory and drops it on any error, so a refused archive leaves
nothing behind.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

MAX_FILES = 4096  # a released checkpoint has about 20; a model hub repo at most a few hundred
CHUNK = 1024 * 1024
# What an archive's first bytes say it is (tar: the ustar magic at offset 257).
HEAD_BYTES = 512
SKIPPED = ("__MACOSX",)  # macOS Finder's resource forks: not part of the checkpoint


class ArchiveRefused(Exception):
    """The archive cannot be imported; `code` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def kind(head: bytes) -> str | None:
    """`tar`, `tar.gz` or `zip` from the first bytes of a file (None: none of them)."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def member_path(name: str) -> PurePosixPath | None:
    """The relative path a member may be extracted to; None for the archive's root entry
    (`./`). Anything that could land outside the target directory is refused."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveRefused("archive_unsafe_member", f"archive member {name!r} is absolute")
    if "\x00" in name or "\\" in name:
        raise ArchiveRefused(
            "archive_unsafe_member", f"archive member {name!r} has a NUL or a backslash"
        )
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise ArchiveRefused(
            "archive_unsafe_member", f"archive member {name!r} climbs out of the directory (..)"
        )
    return PurePosixPath(*parts) if parts else None


class _Budget:
    """Counts members and the bytes written against the caps; the first step over refuses."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = self.files = 0
        self.names: set[PurePosixPath] = set()

    def member(self, path: PurePosixPath) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise ArchiveRefused(
                "archive_too_many_files", f"the archive has more than {self.max_files} members"
            )
        if path in self.names:
            raise ArchiveRefused("archive_unsafe_member", f"archive member {path} appears twice")
        self.names.add(path)

    def take(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise ArchiveRefused(
                "archive_too_large",
                f"the archive extracts to more than {self.max_bytes} bytes (MOSS_IMPORT_MAX_BYTES)",
            )


def _refuse_type(name: str, what: str) -> ArchiveRefused:
    return ArchiveRefused(
        "archive_unsafe_member",
        f"archive member {name!r} is {what}: only regular files and directories are taken "
        "(no links, devices or fifos)",
    )


def _tar_type(member: tarfile.TarInfo) -> str | None:
    """What a member is, when it is not a regular file or a directory."""
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    return None if member.isreg() or member.isdir() else "of an unknown type"


def _extract_tar(path: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            relative = member_path(member.name)
            if relative is None or relative.parts[0] in SKIPPED:
                continue
            if (what := _tar_type(member)) is not None:
                raise _refuse_type(member.name, what)
            budget.member(relative)
            budget.take(member.size)
            member.name = relative.as_posix()
            tar.extract(member, dest, filter="data")


def _zip_type(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "a fifo"
    return None


def _extract_zip(path: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            relative = member_path(info.filename)
            if relative is None or relative.parts[0] in SKIPPED:
                continue
            if (what := _zip_type(info)) is not None:
                raise _refuse_type(info.filename, what)
            if info.flag_bits & 0x1:
                raise ArchiveRefused(
                    "archive_invalid", f"archive member {info.filename!r} is encrypted"
                )
            budget.member(relative)
            target = dest.joinpath(*relative.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, target.open("xb") as out:
                while block := source.read(CHUNK):  # zipfile stops at the declared size
                    budget.take(len(block))
                    out.write(block)


def extract(path: Path, dest: Path, *, max_bytes: int, max_files: int = MAX_FILES) -> Path:
    """Extract the archive at `path` into the empty directory `dest`; returns the checkpoint's
    directory: `dest` itself, or the one directory the archive holds (`tar -C parent ckpt`)."""
    with path.open("rb") as handle:
        found = kind(handle.read(HEAD_BYTES))
    if found is None:
        raise ArchiveRefused("archive_invalid", "the file is not a .tar, .tar.gz or .zip archive")
    budget = _Budget(max_bytes, max_files)
    try:
        if found == "zip":
            _extract_zip(path, dest, budget)
        else:
            _extract_tar(path, dest, budget)
    except ArchiveRefused:
        raise
    except tarfile.FilterError as exc:  # the data filter's own refusals, as a second line
        raise ArchiveRefused("archive_unsafe_member", f"archive member refused: {exc}") from exc
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ArchiveRefused(
            "archive_invalid", f"the {found} archive cannot be read: {exc}"
        ) from exc
    if budget.files == 0:
        raise ArchiveRefused("archive_invalid", "the archive is empty")
    return checkpoint_root(dest)


def checkpoint_root(dest: Path) -> Path:
    """`dest`, or its only subdirectory when the checkpoint was archived with its folder."""
    if (dest / "config.json").is_file():
        return dest
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def pack(directory: Path, target: Path) -> int:
    """Write `directory`'s files into the tar archive `target` (uncompressed: safetensors do
    not compress); returns its size. Hidden files (hub bookkeeping, caches) are left out, and
    links are followed (a hub cache's snapshot is links to its blobs): the archive holds
    regular files only, as `extract` requires."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
        for item in sorted(directory.rglob("*")):
            relative = item.relative_to(directory)
            if any(part.startswith(".") for part in relative.parts) or not item.is_file():
                continue
            tar.add(item, arcname=relative.as_posix(), recursive=False)
    return target.stat().st_size
