"""Protein models: ESM2 parity with fair-esm and transformers, a real pretrained masked LM, DSM sampling."""

from __future__ import annotations

import os

import pytest
import torch

from encoders.protein import ESM_PRESETS, MaskedLMEncoder, build_esm2, load_esm2
from multimodal.backbone.esm import ESMDiffusion
from multimodal.sampling import SpecialIds, create_sampler, infill, sampler_config_class
from multimodal.sampling.base import SamplerError
from multimodal.tokenizer import ESMTokenizer

TRASTUZUMAB_VH = (
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAV"
    "YYCSRWGGDGFYAMDYWGQGTLVTVSS"
)


def tokens(tok, seqs):
    rows = [[tok.cls_id] + tok.encode(s) + [tok.eos_id] for s in seqs]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])


def test_dsm_backbone_equals_fair_esm_with_the_logit_cap():
    torch.manual_seed(0)
    tok = ESMTokenizer()
    body = build_esm2(*ESM_PRESETS["esm2_tiny"]).eval()
    assert body.token_dropout is False
    model = ESMDiffusion(body, logit_cap=30.0)
    ids = tokens(tok, ["MKTAYIAKQR", "MKV"])
    ref = body(ids)["logits"]
    out = model(ids)
    torch.testing.assert_close(out.logits, 30.0 * torch.tanh(ref / 30.0))
    mask = (ids != tok.pad_id).long()  # an explicit padding mask gives the same result
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, out.logits)


def tiny_esm_fields(token_dropout: bool) -> dict:
    """A 2 x 64 Hugging Face ESM2 config in the released layout (rotary, ESM's 33-token alphabet)."""
    return dict(
        vocab_size=33,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        pad_token_id=1,
        mask_token_id=32,
        max_position_embeddings=128,
        layer_norm_eps=1e-5,  # as the released ESM2 configs (fair-esm uses 1e-5)
        token_dropout=token_dropout,
    )


def test_hugging_face_esm_folder_loads_into_fair_esm(tmp_path):
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(0)
    hf = EsmForMaskedLM(EsmConfig(**tiny_esm_fields(token_dropout=False))).eval()
    hf.save_pretrained(str(tmp_path))
    ours = ESMDiffusion(load_esm2(tmp_path).eval(), logit_cap=0.0)
    ids = tokens(ESMTokenizer(), ["MKTAYIAKQRQISFVKSHFSRQ"])
    torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="ESM checkpoint not found"):
        load_esm2(tmp_path / "missing.pt")


def antiberty_folder():
    import antiberty

    path = os.path.join(os.path.dirname(antiberty.__file__), "trained_models", "AntiBERTy_md_smooth")
    if not os.path.isdir(path):
        pytest.skip("this antiberty release does not ship its weights (use antiberty==0.1.3)")
    return path


def test_real_pretrained_antibody_model_recovers_masked_residues():
    folder = antiberty_folder()
    encoder = MaskedLMEncoder(folder, vocab=os.path.join(os.path.dirname(folder), "vocab.txt"))
    ids = torch.tensor([encoder.token_ids(TRASTUZUMAB_VH)])
    positions = list(range(3, len(TRASTUZUMAB_VH), 7))  # every 7th residue: 17 masked positions
    masked = ids.clone()
    masked[0, [p + 1 for p in positions]] = encoder.vocab["[MASK]"]
    with torch.no_grad():
        logits = encoder.masked_lm(masked)
    pred = logits[0, [p + 1 for p in positions]].argmax(-1)
    accuracy = (pred == ids[0, [p + 1 for p in positions]]).float().mean().item()
    assert accuracy >= 0.6, accuracy  # a random model would get about 1/20
    assert encoder(ids).shape == (1, ids.shape[1], 512)


def test_dsm_sampler_steps_inpainting_and_forbidden_tokens():
    torch.manual_seed(0)
    tok = ESMTokenizer()
    model = ESMDiffusion(build_esm2(*ESM_PRESETS["esm2_tiny"]).eval())
    ids = tokens(tok, ["MKTAYIAKQRQISFVKSHFS"])
    masked = ids.clone()
    masked[0, 3:15] = tok.mask_id  # 12 masks
    forbid = [i for i in range(len(tok)) if i not in tok.residue_ids()]
    cfg = sampler_config_class("dsm")(name="dsm", step_divisor=4, forbid_ids=forbid)
    out = infill(
        model,
        masked,
        create_sampler(cfg),
        SpecialIds(tok.mask_id, tok.eos_id),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.nfe == 3  # max(1, 12 // 4)
    keep = masked != tok.mask_id
    assert torch.equal(out.sequences[keep], ids[keep])  # inpainting keeps every given residue
    assert set(out.sequences[0, 3:15].tolist()) <= set(tok.residue_ids())  # specials never sampled


def test_dsm_steps_from_the_row_or_from_the_whole_batch():
    torch.manual_seed(0)
    tok = ESMTokenizer()
    model = ESMDiffusion(build_esm2(*ESM_PRESETS["esm2_tiny"]).eval())
    ids = tokens(tok, ["MKTAYIAKQRQISFVKSHFS", "MKTAYIAKQRQISFVKSHFS"])
    masked = ids.clone()
    masked[0, 3:15] = tok.mask_id  # 12 masks
    masked[1, 3:7] = tok.mask_id  # 4 masks
    special = SpecialIds(tok.mask_id, tok.eos_id)
    nfe = {}
    for steps_from in ("row", "batch"):
        cfg = sampler_config_class("dsm")(name="dsm", step_divisor=4, steps_from=steps_from)
        out = infill(model, masked, create_sampler(cfg), special, generator=torch.Generator().manual_seed(0))
        assert not (out.sequences == tok.mask_id).any()  # every row filled, the 4-mask row over more steps too
        nfe[steps_from] = out.nfe
    assert nfe == {"row": 3, "batch": 4}  # max(1, 12 // 4) vs max(1, (12 + 4) // 4), as DSM's release counts
    with pytest.raises(SamplerError, match="steps_from"):
        sampler_config_class("dsm")(name="dsm", steps_from="all")


def dsm_folder(folder, token_dropout=True, seed=0):
    """A tiny checkpoint in the released DSM layout (GleghornLab/DSM_150, Synthyra/DSM_ppi_full): a FastESM
    body under ``esm.`` (Hugging Face ESM names), the unused pooler at the top level, and DSM's LM head
    (dense, layer_norm, decoder with its own bias and the embedding matrix), config model_type ``dsm``.
    Returns the Hugging Face EsmModel holding the same body, to compute the reference with."""
    import json

    from safetensors.torch import save_file
    from transformers import EsmConfig, EsmModel

    torch.manual_seed(seed)
    fields = tiny_esm_fields(token_dropout=token_dropout)
    body = EsmModel(EsmConfig(**fields)).eval()
    state = {f"esm.{k}": v for k, v in body.state_dict().items() if not k.startswith("pooler.")}
    state |= {f"pooler.{k}": v.clone() for k, v in body.pooler.state_dict().items()}
    head = {
        "lm_head.dense.weight": torch.randn(64, 64) * 0.1,
        "lm_head.dense.bias": torch.randn(64) * 0.1,
        "lm_head.layer_norm.weight": 1 + torch.randn(64) * 0.1,
        "lm_head.layer_norm.bias": torch.randn(64) * 0.1,
        "lm_head.decoder.bias": torch.randn(33) * 0.1,
    }
    state |= head  # the tied decoder weight is saved once, as the embeddings
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "dsm", "architectures": ["DSM"], **fields}))
    return body, head


def dsm_reference_logits(body, head, ids):
    """DSM's LM head as its modeling file defines it: decoder(LN(GELU(dense(h)))), capped at 30 tanh(x / 30)."""
    h = body(ids).last_hidden_state
    h = torch.nn.functional.gelu(h @ head["lm_head.dense.weight"].T + head["lm_head.dense.bias"])
    h = torch.nn.functional.layer_norm(h, (64,), head["lm_head.layer_norm.weight"], head["lm_head.layer_norm.bias"])
    logits = h @ body.embeddings.word_embeddings.weight.T + head["lm_head.decoder.bias"]
    return 30 * torch.tanh(logits / 30)


@pytest.mark.parametrize("token_dropout", [True, False])
def test_a_released_dsm_folder_gives_the_reference_logits(tmp_path, token_dropout):
    body, head = dsm_folder(tmp_path, token_dropout)
    ours = ESMDiffusion(load_esm2(tmp_path).eval())
    tok = ESMTokenizer()
    ids = tokens(tok, ["MKTAYIAKQRQISFVKSHFSRQ"])
    ids[0, 3:7] = tok.mask_id  # token dropout rescales by the share of masks, so put some in
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, dsm_reference_logits(body, head, ids), atol=1e-4, rtol=1e-4)


def test_dsm_folder_key_problems_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    dsm_folder(tmp_path)
    file = tmp_path / "model.safetensors"
    state = load_file(str(file))
    broken = dict(state)
    del broken["esm.encoder.layer.1.intermediate.dense.weight"]
    broken["lm_head.dense.bias"] = torch.zeros(65)
    save_file(broken, str(file))
    with pytest.raises(
        ValueError, match=r"missing keys: layers\.1\.fc1\.weight.*mis-shaped keys: lm_head\.dense\.bias"
    ):
        load_esm2(tmp_path)
    save_file({**state, "esm.encoder.layer.0.adapter.weight": torch.zeros(2)}, str(file))
    with pytest.raises(ValueError, match="unexpected key .*esm.encoder.layer.0.adapter.weight"):
        load_esm2(tmp_path)
    untied = {**state, "lm_head.decoder.weight": torch.zeros(33, 64)}
    save_file(untied, str(file))
    with pytest.raises(ValueError, match="differs from the token embeddings"):
        load_esm2(tmp_path)
