"""Shared fixtures. An autouse guard makes every network connection fail (loopback excepted, for the
server tests): tests run offline."""

from __future__ import annotations

import io
import random
import socket
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from multimodal.types import BackboneOutput


class NetworkBlocked(RuntimeError):
    pass


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _loopback(address) -> bool:
    return isinstance(address, tuple) and len(address) >= 2 and address[0] in LOOPBACK


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every connection fails but those to this machine's loopback (the server tests' own server)."""
    connect, connect_ex, create_connection = socket.socket.connect, socket.socket.connect_ex, socket.create_connection

    def guarded(original):
        def call(*args, **kwargs):
            given = args[1:] if original is not create_connection else args
            address = given[0] if given else kwargs.get("address")
            if not _loopback(address):
                raise NetworkBlocked(f"tests must not open network connections (to {address!r})")
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(socket.socket, "connect", guarded(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
    monkeypatch.setattr(socket, "create_connection", guarded(create_connection))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def write_tar(target: Path | BinaryIO, members: Iterable[tuple[str, bytes]]) -> None:
    """A tar archive (WebDataset shard, .deb data member) holding `members` (name, bytes) in order."""
    with tarfile.open(fileobj=target, mode="w") if not isinstance(target, Path) else tarfile.open(target, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(autouse=True)
def small_threads():
    torch.set_num_threads(1)
    yield


class TableModel(torch.nn.Module):
    """A fake model whose logits are a fixed (L, V) table or a function of the canvas.

    `hidden_states` are the logits themselves and `head` is the identity, so the generation loop
    sees exactly the hand-built scores.
    """

    def __init__(self, table=None, fn=None):
        super().__init__()
        self.table, self.fn = table, fn
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, return_logits=True, **kwargs):
        self.calls.append(input_ids.clone())
        if self.fn is not None:
            logits = self.fn(input_ids, attention_mask, position_ids)
        else:
            b, n = input_ids.shape
            logits = self.table[:n].expand(b, n, -1).clone()
        return BackboneOutput(logits=logits if return_logits else None, hidden_states=logits)

    def head(self, h):
        return h


@pytest.fixture
def table_model():
    return TableModel


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def protein_folder(tmp_path):
    """A tiny protein data folder: random sequences per split, neighbour pairs, and one bad FASTA."""
    rng = random.Random(0)
    seqs = {
        s: ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(25, 40))) for _ in range(n)]
        for s, n in (("train", 12), ("validation", 3), ("test", 4))
    }
    for split, items in seqs.items():
        (tmp_path / f"{split}.fasta").write_text("".join(f">{split}{i}\n{s}\n" for i, s in enumerate(items)))
        rows = ["seq_a\tseq_b\tlabel\tid_a\tid_b"] + [
            f"{a}\t{b}\t1\t{split}{i}\t{split}{i + 1}" for i, (a, b) in enumerate(zip(items, items[1:], strict=False))
        ]
        (tmp_path / f"{split}_pairs.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "bad.fasta").write_text(">ok\nMKV\n>bad\nMK1V\n")
    return tmp_path
