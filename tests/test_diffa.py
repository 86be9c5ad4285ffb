"""DIFFA's released adapter file loads into our adapters, which compute what the release computes."""

from __future__ import annotations

import pytest
import torch

from encoders import create_projector
from encoders.base import SequenceFeatures

C, D, Q, LAYERS = 32, 48, 4, (1, 3)


def release_file(tmp_path, seed=0):
    """A tiny ``pytorch_model.bin`` in DIFFA's layout: its connectors, 20 prompt vectors, and the frozen
    Whisper encoder (``whisper_model.*``), built from the modules the release builds them from."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from encoders.diffa import bert_qformer

    torch.manual_seed(seed)
    conv = torch.nn.Sequential(
        torch.nn.Conv1d(C, C, 3, padding=1), torch.nn.GELU(), torch.nn.Conv1d(C, 4 * C, 3, stride=4, padding=1)
    )
    linear = torch.nn.Sequential(torch.nn.Linear(4 * C, C), torch.nn.ReLU(), torch.nn.Linear(C, D), torch.nn.ReLU())
    qformer = bert_qformer(C, 2, 2, 64)
    state = {f"semantic_connector.conv.{k}": v for k, v in conv.state_dict().items()}
    state |= {f"semantic_connector.linear_connector.{k}": v for k, v in linear.state_dict().items()}
    state |= {
        "semantic_connector.layernorm.weight": 1 + 0.1 * torch.randn(D),
        "semantic_connector.layernorm.bias": torch.randn(D),
    }
    state |= {f"acoustic_connector.layer_prompts.{i}": torch.randn(1, Q, C) for i in range(len(LAYERS))}
    state["acoustic_connector.layer_weights"] = torch.randn(Q, len(LAYERS))
    state |= {f"acoustic_connector.qformer.{k}": v for k, v in qformer.state_dict().items()}
    state |= {
        "acoustic_connector.proj.0.weight": 1 + 0.1 * torch.randn(C),
        "acoustic_connector.proj.0.bias": torch.randn(C),
    }
    state |= {
        "acoustic_connector.proj.1.weight": torch.randn(D, C) * 0.1,
        "acoustic_connector.proj.1.bias": torch.randn(D),
    }
    state["trainable_prompts.weight"] = torch.randn(20, D)
    whisper = WhisperEncoder(WhisperConfig(d_model=C, encoder_layers=3, encoder_attention_heads=2, num_mel_bins=80))
    state |= {f"whisper_model.{k}": v for k, v in whisper.state_dict().items()}
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    return path, state


def release_forward(state, hidden_states, lengths):
    """The release's stage-2 speech embeddings, restated from its modeling file: per tapped layer its
    prompts through the shared BERT Q-Former, a per-query softmax over layers, LayerNorm + Linear; the
    semantic connector over the last layer cut to a multiple of 4 frames; acoustic first."""
    from encoders.diffa import bert_qformer
    from encoders.weights import strip_prefix

    qformer = bert_qformer(C, 2, 2, 64).eval()
    qformer.load_state_dict(strip_prefix(state, "acoustic_connector.qformer."))
    b = hidden_states[0].shape[0]
    outs = []
    for idx, h in enumerate(hidden_states):
        if idx in LAYERS:
            prompt = state[f"acoustic_connector.layer_prompts.{LAYERS.index(idx)}"].expand(b, -1, -1)
            outs.append(qformer(hidden_states=prompt, encoder_hidden_states=h).last_hidden_state)
    mixed = (
        torch.stack(outs).permute(1, 2, 0, 3) * state["acoustic_connector.layer_weights"].softmax(-1)[..., None]
    ).sum(2)
    ln = torch.nn.functional.layer_norm(
        mixed, (C,), state["acoustic_connector.proj.0.weight"], state["acoustic_connector.proj.0.bias"]
    )
    acoustic = ln @ state["acoustic_connector.proj.1.weight"].T + state["acoustic_connector.proj.1.bias"]
    x = hidden_states[-1][:, : int(lengths.max())]  # the release cuts the last layer to the longest real clip
    x = x[:, : x.shape[1] // 4 * 4].transpose(1, 2)
    x = torch.nn.functional.conv1d(
        x, state["semantic_connector.conv.0.weight"], state["semantic_connector.conv.0.bias"], padding=1
    )
    x = torch.nn.functional.gelu(x)
    x = torch.nn.functional.conv1d(
        x, state["semantic_connector.conv.2.weight"], state["semantic_connector.conv.2.bias"], stride=4, padding=1
    )
    x = x.transpose(1, 2)
    x = torch.relu(
        x @ state["semantic_connector.linear_connector.0.weight"].T
        + state["semantic_connector.linear_connector.0.bias"]
    )
    x = torch.relu(
        x @ state["semantic_connector.linear_connector.2.weight"].T
        + state["semantic_connector.linear_connector.2.bias"]
    )
    semantic = torch.nn.functional.layer_norm(
        x, (D,), state["semantic_connector.layernorm.weight"], state["semantic_connector.layernorm.bias"]
    )
    return torch.cat([acoustic, semantic], 1)


def test_the_released_adapter_file_gives_the_release_embeddings(tmp_path):
    path, state = release_file(tmp_path)
    adapter = create_projector(
        "diffa_dual", C, D, weights=str(path), layers=list(LAYERS), queries=Q, heads=2, intermediate_size=64
    ).eval()
    hidden = tuple(torch.randn(1, 40, C) for _ in range(4))  # embeddings + 3 layers, one 38-frame clip
    lengths = torch.tensor([38])
    with torch.no_grad():
        tokens, valid = adapter(SequenceFeatures(hidden, lengths))
        expected = release_forward(state, hidden, lengths)
    n = int(valid.sum())
    assert n == Q + 38 // 4 and tokens.shape[1] == Q + 40 // 4
    torch.testing.assert_close(tokens[:, :n], expected)
    stage1 = create_projector("diffa_semantic", C, D, prompt_vectors=20, weights=str(path))
    torch.testing.assert_close(stage1.prompt.vectors.detach(), state["trainable_prompts.weight"])


def test_release_key_problems_are_named(tmp_path):
    path, state = release_file(tmp_path)
    broken = {k: v for k, v in state.items() if k != "acoustic_connector.qformer.layer.1.output.dense.weight"}
    broken["acoustic_connector.extra.weight"] = torch.zeros(1)
    broken["semantic_connector.layernorm.bias"] = torch.zeros(D + 1)
    torch.save(broken, path)
    with pytest.raises(
        ValueError, match=r"missing keys: qformer\.layer\.1\.output\.dense\.weight; unexpected keys: extra"
    ):
        create_projector(
            "diffa_acoustic", C, D, weights=str(path), layers=list(LAYERS), queries=Q, heads=2, intermediate_size=64
        )
    with pytest.raises(ValueError, match=r"mis-shaped keys: layernorm\.bias"):
        create_projector("diffa_semantic", C, D, weights=str(path))
    torch.save({"whisper_model.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no semantic_connector"):
        create_projector("diffa_semantic", C, D, weights=str(path))


def test_the_qformer_is_bidirectional_and_uses_dropout_in_training():
    adapter = create_projector("diffa_acoustic", C, D, layers=[0], queries=Q, heads=2, intermediate_size=64)
    features = SequenceFeatures((torch.randn(2, 10, C),), torch.tensor([10, 10]))
    adapter.eval()
    with torch.no_grad():
        a = adapter(features)[0]
        # reversing the order of the queries permutes their outputs: no query attends causally
        adapter.layer_prompts[0].data = adapter.layer_prompts[0].data.flip(1)
        adapter.layer_weights.data = adapter.layer_weights.data.flip(0)
        torch.testing.assert_close(adapter(features)[0], a.flip(1))
    adapter.train()
    with torch.no_grad():
        assert not torch.equal(adapter(features)[0], adapter(features)[0])  # BERT's dropout 0.1
