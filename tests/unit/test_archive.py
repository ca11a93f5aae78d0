"""Checkpoint archives are hostile until extracted safely (services/core/archive.py): every
refusal below leaves the target directory as empty as it was given."""

from __future__ import annotations

import io
import random
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from services.core.archive import ArchiveRefused, checkpoint_root, extract, kind, pack
from services.core.storage import LocalStorage

CONFIG = b'{"model_type": "moss_audio"}'


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = CONFIG) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind_: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind_, target
    return info, None


def refused(archive: Path, dest: Path, code: str, **caps) -> str:
    with pytest.raises(ArchiveRefused) as caught:
        extract(archive, dest, max_bytes=caps.pop("max_bytes", 1 << 20), **caps)
    assert caught.value.code == code, caught.value
    return str(caught.value)


def test_a_checkpoint_directory_round_trips_through_pack_and_extract(tmp_path) -> None:
    source = tmp_path / "ckpt"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_bytes(CONFIG)
    (source / "sub" / "weights.bin").write_bytes(b"\x00" * 5000)
    (source / ".cache").mkdir()
    (source / ".cache" / "junk").write_text("hub bookkeeping")
    (tmp_path / "blob").write_bytes(b"tokenizer")
    (source / "tokenizer.json").symlink_to(tmp_path / "blob")  # as a hub cache's snapshot
    size = pack(source, tmp_path / "ckpt.tar")
    assert (
        size == (tmp_path / "ckpt.tar").stat().st_size
        and kind((tmp_path / "ckpt.tar").read_bytes()[:512]) == "tar"
    )
    dest = tmp_path / "out"
    dest.mkdir()
    root = extract(tmp_path / "ckpt.tar", dest, max_bytes=1 << 20)
    assert root == dest
    assert (root / "sub" / "weights.bin").read_bytes() == b"\x00" * 5000
    assert (root / "tokenizer.json").read_bytes() == b"tokenizer"
    assert not (root / "tokenizer.json").is_symlink() and not (root / ".cache").exists()


@pytest.mark.parametrize("mode, suffix", [("w:gz", "tar.gz"), ("w", "tar")])
def test_a_tar_of_the_folder_extracts_to_that_folder(tmp_path, mode, suffix) -> None:
    archive = tar_with(
        tmp_path / f"a.{suffix}", [regular("./MOSS/config.json"), regular("MOSS/x.txt", b"x")], mode
    )
    dest = tmp_path / "out"
    dest.mkdir()
    assert kind(archive.read_bytes()[:512]) == suffix
    assert extract(archive, dest, max_bytes=1 << 20) == dest / "MOSS"
    assert (dest / "MOSS" / "config.json").read_bytes() == CONFIG


def test_a_zip_extracts_and_its_folder_is_the_root(tmp_path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ckpt/", b"")
        z.writestr("ckpt/config.json", CONFIG)
        z.writestr("__MACOSX/ckpt/._config.json", b"resource fork")
    dest = tmp_path / "out"
    dest.mkdir()
    assert kind(archive.read_bytes()[:512]) == "zip"
    assert extract(archive, dest, max_bytes=1 << 20) == dest / "ckpt"
    assert not (dest / "__MACOSX").exists()


@pytest.mark.parametrize(
    "member, words",
    [
        (regular("../evil"), "climbs out"),
        (regular("ckpt/../../evil"), "climbs out"),
        (regular("/etc/evil"), "absolute"),
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (special("hard", tarfile.LNKTYPE, "config.json"), "hard link"),
        (special("dev", tarfile.CHRTYPE), "a device"),
        (special("pipe", tarfile.FIFOTYPE), "a fifo"),
    ],
)
def test_unsafe_tar_members_refuse_the_whole_archive(tmp_path, member, words) -> None:
    archive = tar_with(tmp_path / "bad.tar", [regular("config.json"), member])
    dest = tmp_path / "out"
    dest.mkdir()
    assert words in refused(archive, dest, "archive_unsafe_member")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    "name, mode, words",
    [
        ("../evil", 0o100644, "climbs out"),
        ("/abs/evil", 0o100644, "absolute"),
        ("C:/evil", 0o100644, "absolute"),
        ("a\\..\\evil", 0o100644, "backslash"),
        ("link", stat.S_IFLNK | 0o777, "symbolic link"),
    ],
)
def test_unsafe_zip_members_refuse_the_whole_archive(tmp_path, name, mode, words) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        z.writestr(info, b"/etc/passwd")
    dest = tmp_path / "out"
    dest.mkdir()
    assert words in refused(archive, dest, "archive_unsafe_member")
    assert list(dest.iterdir()) == []


def test_caps_count_members_and_the_bytes_written(tmp_path) -> None:
    many = tar_with(tmp_path / "many.tar", [regular(f"f{i}", b"x") for i in range(6)])
    dest = tmp_path / "out"
    dest.mkdir()
    assert "more than 5 members" in refused(many, dest, "archive_too_many_files", max_files=5)
    # A zip bomb: a megabyte of zeros compressed to about a kilobyte.
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", b"\x00" * (1 << 20))
    assert bomb.stat().st_size < 5000
    assert "MOSS_IMPORT_MAX_BYTES" in refused(
        bomb, tmp_path / "out", "archive_too_large", max_bytes=64 * 1024
    )
    big = tar_with(tmp_path / "big.tar.gz", [regular("w.bin", b"\x00" * 100_000)], "w:gz")
    refused(big, tmp_path / "out", "archive_too_large", max_bytes=99_999)


def test_not_an_archive_truncated_or_empty_is_invalid(tmp_path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (tmp_path / "text").write_bytes(b"just text, no archive" * 40)
    assert "not a .tar" in refused(tmp_path / "text", dest, "archive_invalid")
    noise = random.Random(0).randbytes(100_000)  # incompressible: the cut is mid-member
    whole = tar_with(tmp_path / "w.tar.gz", [regular("w.bin", noise)], "w:gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[:3000])
    refused(cut, dest, "archive_invalid")
    refused(tar_with(tmp_path / "empty.tar", []), dest, "archive_invalid")
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as z, pytest.warns(UserWarning):
        z.writestr("config.json", CONFIG)
        z.writestr("config.json", CONFIG)
    refused(tmp_path / "dup.zip", tmp_path / "dup", "archive_unsafe_member")


def test_checkpoint_root_is_the_only_folder_or_the_directory(tmp_path) -> None:
    (tmp_path / "a" / "only").mkdir(parents=True)
    assert checkpoint_root(tmp_path / "a") == tmp_path / "a" / "only"
    (tmp_path / "a" / "other.txt").write_text("x")
    assert checkpoint_root(tmp_path / "a") == tmp_path / "a"


def test_local_storage_downloads_in_chunks_with_progress(tmp_path) -> None:
    storage = LocalStorage(tmp_path / "objects")
    data = bytes(range(256)) * 10_000  # 2.5 MB: three chunks
    storage.put_bytes("imports/acme/ckpt.tar", data)
    seen: list[tuple[int, int]] = []
    size = storage.download("imports/acme/ckpt.tar", tmp_path / "copy", lambda *p: seen.append(p))
    assert size == len(data) and (tmp_path / "copy").read_bytes() == data
    assert seen[-1] == (len(data), len(data)) and len(seen) == 3
