"""The embedded proteome: loading, identity split, neighbour pairs and the writers (on subsets, to stay fast)."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import pytest

pytest.importorskip("pyhmmer")
pytest.importorskip("parasail")

from tasks.protein_io import ProteinRecord, read_fasta, read_pairs, write_fasta  # noqa: E402
from tasks.protein_metrics import identity, max_identity_to  # noqa: E402
from tasks.synthetic.proteome import (  # noqa: E402
    ProteomeConfig,
    are_neighbours,
    identity_components,
    identity_split,
    intergenic_gap,
    load_proteome,
    neighbour_links,
    neighbour_pairs,
    proteome_path,
    write_proteome_dataset,
)

SMALL_CONTIGS = (
    "938293.PRJEB85.HG003684",
    "938293.PRJEB85.HG003688",
    "938293.PRJEB85.HG003689",
    "938293.PRJEB85.HG003691",
)


@pytest.fixture(scope="module")
def genes():
    return load_proteome()


@pytest.fixture(scope="module")
def subset_split(genes):
    sub = genes[::4]  # ~520 proteins, several multi-member families
    return sub, identity_split(sub, threshold=0.4, seed=0)


def test_loads_the_proteome_with_coordinates(genes):
    assert proteome_path().name == "938293.PRJEB85.HG003687.faa"
    assert 2050 <= len(genes) <= 2100
    assert len({g.contig for g in genes}) == 8
    first = genes[0]
    assert (first.id, first.start, first.end, first.strand) == ("938293.PRJEB85.HG003688_1", 204, 629, -1)
    assert all(
        g.start < g.end and g.strand in (1, -1) and set(g.sequence) <= set("ACDEFGHIKLMNPQRSTVWYX") for g in genes
    )
    assert all(g.sequence.count("X") <= 0.1 * len(g.sequence) for g in genes)


def test_prefilter_finds_every_link_of_an_exhaustive_search(genes):
    sub = [g.sequence for g in genes[1::8]]
    comps, candidates, edges = identity_components(sub, threshold=0.4)
    assert candidates < len(sub) * (len(sub) - 1) // 2
    exhaustive = sum(identity(sub[i], sub[j]) >= 0.4 for i in range(len(sub)) for j in range(i + 1, len(sub)))
    assert edges == exhaustive > 0


def test_split_is_deterministic_and_sized(genes, subset_split):
    sub, res = subset_split
    again = identity_split(sub, threshold=0.4, seed=0)
    other = identity_split(sub, threshold=0.4, seed=1)
    assert again.split == res.split and other.split != res.split
    counts = Counter(res.split.values())
    assert counts["test"] <= round(0.1 * len(sub)) and counts["test"] >= 0.08 * len(sub)
    assert counts["validation"] <= round(0.1 * len(sub)) and counts["validation"] >= 0.08 * len(sub)
    assert max(len(c) for c in res.clusters) > 1
    for cluster in res.clusters:  # whole clusters move together
        assert len({res.split[i] for i in cluster}) == 1


def test_no_test_protein_reaches_the_threshold_against_train(subset_split):
    sub, res = subset_split
    train = [g.sequence for g in sub if res.split[g.id] == "train"]
    test = [g.sequence for g in sub if res.split[g.id] == "test"]
    assert max_identity_to(test, train).max() < 0.4


def test_links_keep_neighbours_together(genes):
    sub = [g for g in genes if g.contig in SMALL_CONTIGS]
    links = [(a.id, b.id) for a, b in neighbour_links(sub)]
    res = identity_split(sub, seed=0, links=links)
    assert links and all(res.split[a] == res.split[b] for a, b in links)


def test_neighbour_pairs_are_adjacent_same_strand_and_balanced(genes):
    # runs of four genes share a split, so some neighbours share it and some straddle two splits
    split = {g.id: ("train", "validation", "test")[(g.index // 4) % 3] for g in genes}
    pairs = neighbour_pairs(genes, split, max_gap_bp=50, negative_min_distance_bp=20_000, seed=0)
    by_id = {g.id: g for g in genes}
    neighbours = {frozenset((a.id, b.id)) for a, b in neighbour_links(genes, 50)}
    for name, ps in pairs.items():
        labels = Counter(p.label for p in ps)
        assert labels[1] == labels[0] > 0 or not ps
        for p in ps:
            a, b = by_id[p.id_a], by_id[p.id_b]
            assert split[a.id] == split[b.id] == name
            assert (p.seq_a, p.seq_b) == (a.sequence, b.sequence)
            if p.label == 1:
                assert are_neighbours(a, b, 50) and a.strand == b.strand and abs(a.index - b.index) == 1
                assert intergenic_gap(a, b) <= 50
            else:
                assert frozenset((a.id, b.id)) not in neighbours
                assert a.contig != b.contig or abs(a.start + a.end - b.start - b.end) / 2 >= 20_000
    same_split = [1 for a, b in neighbour_links(genes, 50) if split[a.id] == split[b.id]]
    assert sum(p.label for ps in pairs.values() for p in ps) == len(same_split) < len(neighbours)
    assert pairs == neighbour_pairs(genes, split, seed=0)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory, genes):
    """A Prodigal file of four small contigs (235 proteins), headers as in the original."""
    records, _ = read_fasta(proteome_path())
    keep = {g.id for g in genes if g.contig in SMALL_CONTIGS}
    path = tmp_path_factory.mktemp("src") / "small.faa"
    write_fasta(path, [r for r in records if r.id in keep])
    return path


def test_writers_round_trip_and_are_deterministic(tmp_path, small_source):
    cfg = ProteomeConfig(source=str(small_source), seed=3, shard_size=40)
    manifest = write_proteome_dataset(tmp_path / "a", cfg)
    write_proteome_dataset(tmp_path / "b", cfg)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "manifest.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    genes = load_proteome(small_source)
    fasta = {s: read_fasta(tmp_path / "a" / f"{s}.fasta")[0] for s in ("train", "validation", "test")}
    assert sum(len(v) for v in fasta.values()) == len(genes)
    assert {r.sequence for v in fasta.values() for r in v} == {g.sequence for g in genes}
    assert manifest["proteins"] == {s: len(v) for s, v in fasta.items()}
    assert manifest["identity"]["max_test_vs_train"] < 0.4

    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk["pairs"] == manifest["pairs"]
    for s in ("train", "validation", "test"):
        pairs, stats = read_pairs(tmp_path / "a" / f"{s}_pairs.tsv")
        assert not stats.skipped and len(pairs) == sum(manifest["pairs"][s].values())
        ids = {r.id for r in fasta[s]}
        assert all(p.id_a in ids and p.id_b in ids for p in pairs)
        shard_samples = []
        for shard in sorted((tmp_path / "a" / "shards").glob(f"pairs-{s}-*.tar")):
            with tarfile.open(shard) as tar:
                names = tar.getnames()
                assert all(n.endswith(".json") and n.count(".") == 1 for n in names)
                shard_samples += [json.load(tar.extractfile(n)) for n in names]
        assert [(d["seq_a"], d["seq_b"], d["label"], d["id_a"], d["id_b"]) for d in shard_samples] == [
            (p.seq_a, p.seq_b, p.label, p.id_a, p.id_b) for p in pairs
        ]


def test_shards_read_with_webdataset(tmp_path, small_source):
    wds = pytest.importorskip("webdataset")
    write_proteome_dataset(tmp_path, ProteomeConfig(source=str(small_source), verify=False))
    url = str(tmp_path / "shards" / "proteins-train-000000.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False).decode())
    records = read_fasta(tmp_path / "train.fasta")[0]
    assert [s["json"]["sequence"] for s in samples] == [r.sequence for r in records]


def test_bad_header_is_reported(tmp_path):
    path = tmp_path / "plain.faa"
    write_fasta(path, [ProteinRecord("x_1", "no coordinates", "MKV")])
    with pytest.raises(ValueError, match="x_1.*Prodigal"):
        load_proteome(path)
