"""Sequence packing: layout of packed rows, no attention across documents, loss = per-document losses."""

from __future__ import annotations

import copy
import functools
import math
import pickle

import pytest
import torch

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.diffusion.loss import masked_diffusion_loss
from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.diffusion.schedule import LLaDALinear
from multimodal.tokenizer import BuiltinTokenizer
from multimodal.train.packing import (
    Document,
    PackedCollate,
    document_attention_mask,
    document_from_batch,
    first_fit_decreasing,
    pack_documents,
)
from multimodal.types import BackboneOutput, MultimodalBatch
from tasks import create_task
from tasks.base import Layout
from tasks.digits import DigitsConfig

MASK_ID, VOCAB = 1, 32


def digit_task(answer_length: int | None):
    cfg = DigitsConfig(train_size=40, validation_size=4, test_size=4, min_digits=2, max_digits=9)
    cfg.answer_length = answer_length
    task = create_task(cfg)
    return task, BuiltinTokenizer.build(task.texts())


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    config = backbone_preset("llada_tiny", n_layers=2, vocab_size=VOCAB, max_seq_len=64, init_std=0.2)
    return create_backbone(config).eval()


def random_documents(lengths: list[int], seed: int = 0) -> list[Document]:
    """Token ids in [2, VOCAB) (never the mask id); a prompt of a third of the length, the rest maskable."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for i, n in enumerate(lengths):
        maskable = torch.arange(n) >= n // 3
        docs.append(Document(torch.randint(2, VOCAB, (n,), generator=g), maskable, {"id": f"doc-{i}"}))
    return docs


@pytest.mark.parametrize("answer_length", [None, 12])
def test_packed_rows_keep_each_documents_layout(answer_length):
    task, tok = digit_task(answer_length)
    layouts = task.train_layouts()[:13]
    collate = functools.partial(task.collate, tokenizer=tok)
    batch = PackedCollate(collate, pack_length=40, pad_id=tok.pad_id)(layouts)
    alone = [collate([lay]) for lay in layouts]
    total = sum(b.input_ids.shape[1] for b in alone)
    assert batch.input_ids.shape[0] == len(first_fit_decreasing([b.input_ids.shape[1] for b in alone], 40))
    assert batch.input_ids.shape[0] < len(layouts) and batch.input_ids.shape[1] == 40
    assert batch.num_tokens == total and int((batch.document_ids < 0).sum()) == batch.input_ids.numel() - total
    assert sorted(m["id"] for m in batch.meta) == sorted(lay.meta["id"] for lay in layouts)
    by_id = {lay.meta["id"]: one for lay, one in zip(layouts, alone, strict=True)}
    for d, meta in enumerate(batch.meta):
        where = batch.document_ids == d
        row = int(where.any(1).nonzero()[0])
        cols = where[row].nonzero().flatten()
        assert torch.equal(cols, torch.arange(int(cols[0]), int(cols[-1]) + 1))  # one contiguous span
        one = by_id[meta["id"]]
        assert torch.equal(batch.input_ids[row, cols], one.input_ids[0])
        assert torch.equal(batch.maskable[row, cols], one.maskable[0])
        assert torch.equal(batch.position_ids[row, cols], torch.arange(len(cols)))
    pad = batch.document_ids < 0
    assert not batch.maskable[pad].any() and (batch.input_ids[pad] == tok.pad_id).all()
    assert (batch.position_ids[pad] == 0).all()
    assert batch.document_ids.max() + 1 == len(layouts)


def test_first_fit_decreasing_fills_rows_within_capacity():
    lengths = [6, 5, 4, 3, 2, 9, 1, 7, 3]
    bins = first_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == math.ceil(sum(lengths) / 10)  # these lengths pack perfectly; next-fit would need 6 rows


def test_attention_mask_is_block_diagonal():
    ids = torch.tensor([[0, 0, 1, 1, 1, -1, -1], [2, 2, 2, 2, 3, 3, 3]])
    mask = document_attention_mask(ids)
    for b in range(2):
        for i in range(7):
            for j in range(7):
                same_doc = bool(ids[b, i] == ids[b, j] and ids[b, i] >= 0)
                assert bool(mask[b, i, j]) == (same_doc or i == j)


def test_documents_never_attend_across(backbone):
    docs = random_documents([9, 17, 5, 30, 12, 8, 21])
    batch = pack_documents(docs, pack_length=40)
    assert batch.input_ids.shape[0] < len(docs)  # several documents share rows
    backbone = copy.deepcopy(backbone).double()  # float64: only the summation order differs between the two runs
    with torch.no_grad():
        packed = backbone(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
        for d, doc in enumerate(batch.meta):
            alone = backbone(docs[int(doc["id"].removeprefix("doc-"))].input_ids[None]).logits[0]
            torch.testing.assert_close(packed[batch.document_ids == d], alone)
        assert torch.isfinite(packed).all()  # padding positions too (they attend themselves only)


class Recording(torch.nn.Module):
    """Wraps the backbone and keeps the corrupted input of each call."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.inputs, self.masks = backbone, [], []

    @property
    def head_weight(self):
        return self.backbone.head_weight

    def forward(self, xt, **kwargs) -> BackboneOutput:
        self.inputs.append(xt)
        self.masks.append(kwargs.get("attention_mask"))
        return self.backbone(xt, **kwargs)


class RecordingSchedule(LLaDALinear):
    """LLaDA's linear schedule that keeps the times it draws."""

    def __init__(self):
        super().__init__(eps=1e-3)
        self.drawn = []

    def sample_t(self, batch_size, **kwargs):
        t = super().sample_t(batch_size, **kwargs)
        self.drawn.append(t)
        return t


@pytest.mark.parametrize("normalisation", ["answer", "sequence", "tokens", "masked"])
def test_packed_loss_combines_the_documents_losses_alone(backbone, normalisation):
    """diffusion_loss on packed rows == the documented combination of each document's loss run alone,
    with the same t (recorded from the schedule) and the same masks (read off the corrupted input)."""
    docs = random_documents([9, 17, 5, 30, 12, 8, 21], seed=1)
    batch = pack_documents(docs, pack_length=40)
    model, schedule = Recording(backbone), RecordingSchedule()
    cfg = DiffusionConfig(normalisation=normalisation)
    packed = diffusion_loss(model, batch, cfg, schedule, MASK_ID, torch.Generator().manual_seed(3))
    (t_doc,) = schedule.drawn
    assert t_doc.shape == (len(docs),)  # one t per document, not per row
    xt = model.inputs[0]
    losses, sizes = [], []
    for d, meta in enumerate(batch.meta):
        where = batch.document_ids == d
        doc = docs[int(meta["id"].removeprefix("doc-"))]
        xt_d, masked_d = xt[where][None], (xt[where] == MASK_ID)[None]
        hidden = backbone(xt_d, return_logits=False).hidden_states
        weight = schedule.loss_weight(t_doc[d : d + 1])
        out = masked_diffusion_loss(
            hidden, backbone.head_weight, doc.input_ids[None], masked_d, weight, doc.maskable[None], normalisation
        )
        losses.append(out.loss)
        counts = {"answer": 1, "sequence": len(doc), "tokens": int(doc.maskable.sum()), "masked": int(masked_d.sum())}
        sizes.append(counts[normalisation])  # the documented weight of each document's loss
    sizes = torch.tensor(sizes, dtype=torch.float32)
    expected = (torch.stack(losses) * sizes).sum() / sizes.sum()
    torch.testing.assert_close(packed.loss, expected)
    assert packed.num_masked == int((xt == MASK_ID).sum()) > 0
    rates = [float((xt[batch.document_ids == d] == MASK_ID).float().mean()) for d in range(len(docs))]
    assert max(rates) - min(rates) > 0.3  # documents sharing rows get their own mask rates


def test_packed_gradients_equal_the_mean_of_the_documents_gradients(backbone):
    docs = random_documents([14, 6, 25, 9], seed=2)
    batch = pack_documents(docs, pack_length=32)
    model, schedule = Recording(backbone), RecordingSchedule()
    params = list(backbone.parameters())
    packed = diffusion_loss(model, batch, DiffusionConfig(), schedule, MASK_ID, torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(packed.loss, params)
    xt, (t_doc,) = model.inputs[0], schedule.drawn
    total = 0.0
    for d, meta in enumerate(batch.meta):
        where, doc = batch.document_ids == d, docs[int(meta["id"].removeprefix("doc-"))]
        hidden = backbone(xt[where][None], return_logits=False).hidden_states
        weight = schedule.loss_weight(t_doc[d : d + 1])
        masked = (xt[where] == MASK_ID)[None]
        alone = masked_diffusion_loss(
            hidden, backbone.head_weight, doc.input_ids[None], masked, weight, doc.maskable[None], "answer"
        )
        total = total + alone.loss / len(docs)
    for ours, theirs in zip(grads, torch.autograd.grad(total, params), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)  # float32 sums in another order


@pytest.mark.parametrize("normalisation", ["answer", "sequence"])
def test_one_document_per_row_is_the_unpacked_loss(backbone, normalisation):
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(2, VOCAB, (4, 16), generator=g)
    maskable = torch.arange(16)[None].expand(4, 16) >= torch.tensor([[3], [8], [5], [1]])
    plain = MultimodalBatch(input_ids=x0, maskable=maskable)
    docs = MultimodalBatch(input_ids=x0, maskable=maskable, document_ids=torch.arange(4)[:, None].expand(4, 16))
    cfg = DiffusionConfig(normalisation=normalisation)
    ours = diffusion_loss(backbone, docs, cfg, cfg.build_schedule(), MASK_ID, torch.Generator().manual_seed(1))
    theirs = diffusion_loss(backbone, plain, cfg, cfg.build_schedule(), MASK_ID, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.loss, theirs.loss)


def test_truncated_packed_batch_crops_the_attention_mask(backbone):
    batch = pack_documents(random_documents([9, 17, 5, 30, 12]), pack_length=40)
    model = Recording(backbone)
    cfg = DiffusionConfig(truncate_prob=1.0)
    for seed in range(10):  # until a draw crops the rows
        out = diffusion_loss(model, batch, cfg, cfg.build_schedule(), MASK_ID, torch.Generator().manual_seed(seed))
        length = model.inputs[-1].shape[1]
        if length < 40:
            break
    assert length < 40 and torch.isfinite(out.loss)
    assert torch.equal(model.masks[-1], batch.attention_mask[:, :length, :length])


def test_too_long_document_is_named():
    docs = random_documents([10, 41, 12])
    with pytest.raises(ValueError, match="document doc-1 has 41 tokens, more than pack_length 40"):
        pack_documents(docs, pack_length=40)


def test_multimodal_samples_are_refused():
    task, tok = digit_task(None)
    collate = PackedCollate(functools.partial(task.collate, tokenizer=tok), pack_length=64)
    lay = Layout(prompt="<image> 12=", answer="21", meta={"id": "vqa-3"}, media={"image": [torch.zeros(3, 4, 4)]})
    with pytest.raises(ValueError, match="sample vqa-3 has image inputs: sequence packing takes token-only"):
        collate([task.train_layouts()[0], lay])
    spliced = MultimodalBatch(
        input_ids=torch.tensor([[5, 7, 7, 9]]),
        maskable=torch.tensor([[False, False, False, True]]),
        modality_inputs={"audio": torch.zeros(1, 1, 80, 30)},
        meta=[{"id": "asr-0"}],
    )
    with pytest.raises(ValueError, match="sample asr-0 has modality inputs \\(audio\\)"):
        document_from_batch(spliced)


def test_collate_works_in_a_dataloader_and_moves_with_the_batch():
    task, tok = digit_task(None)
    collate = pickle.loads(pickle.dumps(PackedCollate(functools.partial(task.collate, tokenizer=tok), 48)))
    loader = torch.utils.data.DataLoader(task.train_layouts(), batch_size=16, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b.meta) for b in batches) == 40
    moved = batches[0].to("cpu")
    assert torch.equal(moved.document_ids, batches[0].document_ids) and moved.attention_mask.shape[1:] == (48, 48)


def test_train_with_pack_length_and_its_config_checks(tmp_path):
    """train.pack_length runs the packed collate inside `mmdiff train`; configs it cannot serve are refused."""
    from multimodal.config import ConfigError
    from multimodal.train.config import load_experiment
    from multimodal.train.run import train
    from tests.test_resume import losses, settings

    run = train(load_experiment("digits_reverse", settings(tmp_path, "train.max_steps=2", "train.pack_length=64")))
    curve = losses(run.folder)
    assert sorted(curve) == [1, 2] and all(math.isfinite(v) for v in curve.values())
    with pytest.raises(ConfigError, match="exceeds backbone.max_seq_len"):
        train(load_experiment("digits_reverse", settings(tmp_path, "train.pack_length=100000")))
    with pytest.raises(ConfigError, match="token-only task"):
        train(load_experiment("protein_dsm", [f"train.output_dir={tmp_path}", "train.pack_length=256"]))
