"""LLaDA-V as released: anyres tiles, the feature layout, and a tiny LlavaLLaDAModelLM folder loaded and
compared with the checkpoint's own architecture (transformers' LLaMA without the causal mask, SigLIP
without its last layer, LLaVA's MLP and the release's order of feature operations)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from encoders import anyres

ONEVISION = anyres.grid_resolutions("(1x1),...,(6x6)", 384)


def test_grid_pinpoints_span_every_pair_times_the_crop():
    assert anyres.grid_resolutions("(1x1),...,(2x3)", 384) == [
        (384, 384), (384, 768), (384, 1152), (768, 384), (768, 768), (768, 1152),
    ]  # fmt: skip
    assert len(ONEVISION) == 36 and anyres.grid_resolutions([[384, 768]], 384) == [(384, 768)]
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        anyres.grid_resolutions("1x1", 384)


def test_an_800_x_600_image_on_the_onevision_grid():
    # every resolution of at least 800 x 600 keeps all 480,000 pixels; 1152 x 768 wastes the fewest
    assert anyres.select_best_resolution((800, 600), ONEVISION) == (1152, 768)
    # 3 x 2 tiles of 27 x 27 features: a 54 x 81 grid; the image fills 800 * 54 / 600 = 72 columns, so
    # (81 - 72) // 2 = 4 columns are cut on each side
    assert anyres.unpadded_shape(54, 81, (800, 600)) == (54, 73)
    # sqrt(54 * 73 / (4 * 729)) = 1.163 > 1.1: shrunk to (54 // 1.163, 73 // 1.163) = (46, 62)
    (cols, rows), grid, shrunk = anyres.packed_grid((800, 600), ONEVISION, 384, 27, 4)
    assert (cols, rows, grid, shrunk) == (3, 2, (54, 73), (46, 62))
    assert anyres.token_count((800, 600), ONEVISION, 384, 27, 4) == 729 + 46 * 63
    # a small square image: one tile, nothing cut, nothing shrunk
    assert anyres.packed_grid((300, 300), ONEVISION, 384, 27, 4) == ((1, 1), (27, 27), None)


def test_tiles_are_the_padded_image_cut_row_by_row():
    from PIL import Image

    image = Image.effect_noise((100, 40), 60).convert("RGB")
    views = anyres.crops(image, anyres.grid_resolutions("(1x1),...,(3x3)", 32), 32)
    # 96 x 64 keeps 96 x 38 pixels (scale 0.96), more than 96 x 32 (80 x 32) and less wasteful than 96 x 96;
    # the width fills it: 96 x ceil(40 * 0.96) = 96 x 39, centred 12 rows down; then 3 x 2 tiles
    assert anyres.select_best_resolution(image.size, anyres.grid_resolutions("(1x1),...,(3x3)", 32)) == (96, 64)
    assert [v.size for v in views] == [(32, 32)] * 7
    assert views[0].tobytes() == image.resize((32, 32)).tobytes()
    padded = Image.new("RGB", (96, 64))
    padded.paste(image.resize((96, 39)), (0, 12))
    tiles = [padded.crop((x, y, x + 32, y + 32)).tobytes() for y in (0, 32) for x in (0, 32, 64)]
    assert [v.tobytes() for v in views[1:]] == tiles
    packed = anyres.pack_crops(torch.randn(7, 3, 32, 32), image.size)
    padded_item = torch.cat([packed, torch.zeros(2, 3, 32, 32)])  # as stacked with a larger item
    real, size = anyres.unpack_crops(padded_item)
    assert size == (100, 40) and torch.equal(real, packed[1:])


def test_the_tiles_pixels_equal_the_siglip_processor():
    from PIL import Image
    from transformers import SiglipImageProcessor

    from encoders.llada_v import LLaDAVTower

    tile = Image.effect_noise((32, 32), 80).convert("RGB")
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    expected = processor(images=tile, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(LLaDAVTower._pixels(tile), expected, atol=1e-6)


def release_arrange(views, newline, size, resolutions, crop, max_tiles):
    """The release's feature operations in its own order (view, permute, unpad, shrink, newline, base)."""
    side = math.isqrt(views.shape[1])
    width, height = anyres.select_best_resolution(size, resolutions)
    cols, rows = width // crop, height // crop
    base, tiles = views[0], views[1:]
    x = tiles.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
    ow, oh = size
    ch, cw = x.shape[1:]
    if ow / oh > cw / ch:
        pad = (ch - int(oh * (cw / ow))) // 2
        x = x[:, pad : ch - pad, :]
    else:
        pad = (cw - int(ow * (ch / oh))) // 2
        x = x[:, :, pad : cw - pad]
    c, h, w = x.shape
    times = math.sqrt(h * w / (max_tiles * side**2))
    if times > 1.1:
        x = F.interpolate(x[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    x = torch.cat((x, newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
    return torch.cat((base, x.flatten(1, 2).transpose(0, 1)), dim=0)


@pytest.mark.parametrize("size", [(100, 40), (40, 100), (64, 64), (90, 70), (33, 31)])
def test_arrange_follows_the_release(size):
    resolutions = anyres.grid_resolutions("(1x1),...,(3x3)", 32)
    (cols, rows), _, _ = anyres.packed_grid(size, resolutions, 32, 4, 2)
    views, newline = torch.randn(1 + cols * rows, 16, 8), torch.randn(8)
    got = anyres.arrange(views, newline, size, resolutions, 32, 2)
    assert torch.equal(got, release_arrange(views, newline, size, resolutions, 32, 2))
    assert got.shape[0] == anyres.token_count(size, resolutions, 32, 4, 2)


# ---------------------------------------------------------------- a tiny released folder

TOKENS = ["what", "colour", "is", "it", "red", "blue", "a", "square", "."]


def write_llada_v(folder, vocab=64, **config_changes):
    """A tiny LlavaLLaDAModelLM folder: config.json with the release's fields, model.safetensors with its
    key names (LLaMA LM, SigLIP tower of 2 layers, mm_projector, image_newline), LLaDA's tokenizer."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from tests.test_chat import SPECIALS, TEMPLATE
    from tests.test_tokenizer import make_hf_folder

    torch.manual_seed(0)
    lm_config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    lm = LlamaForCausalLM(lm_config)
    tower = SiglipVisionModel(vision_config)
    inner = getattr(tower, "vision_model", tower)
    state = {k: v for k, v in lm.state_dict().items()}
    state.update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in inner.state_dict().items()})
    state = {k: v for k, v in state.items() if ".head." not in k}  # the release replaces the head by nothing
    mlp = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    state.update({f"model.mm_projector.{k}": v for k, v in mlp.state_dict().items()})
    state["model.image_newline"] = torch.randn(32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {
        "architectures": ["LlavaLLaDAModelLM"],
        "model_type": "llava_llada",
        **{k: getattr(lm_config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")},
        **{k: getattr(lm_config, k) for k in ("num_attention_heads", "num_key_value_heads", "rms_norm_eps")},
        "rope_theta": 500000.0,
        "max_position_embeddings": 512,
        "hidden_act": "silu",
        "attention_bias": False,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 24,
        "mm_patch_merge_type": "spatial_unpad",
        "image_aspect_ratio": "anyres_max_2",
        "image_grid_pinpoints": "(1x1),...,(3x3)",
        "mm_vision_tower": "google/siglip2-so400m-patch14-384",
        **config_changes,
    }
    (folder / "config.json").write_text(json.dumps(config))
    make_hf_folder(folder, SPECIALS + ["user", "assistant", "system", *TOKENS, "[UNK]"], bos_token=SPECIALS[0],
                   chat_template=TEMPLATE)  # fmt: skip
    return folder, lm, tower, mlp, state["model.image_newline"]


def test_a_released_folder_gives_the_architectures_logits(tmp_path):
    from PIL import Image

    from multimodal.llada_v import load_llada_v, prompt_batch
    from multimodal.types import MediaItems

    folder, lm, tower, mlp, newline = write_llada_v(tmp_path / "LLaDA-V-tiny")
    model, tok = load_llada_v(folder, vision_heads=2)
    model.eval()
    image = Image.effect_noise((90, 50), 70).convert("RGB")
    batch = prompt_batch(model, tok, [{"role": "user", "content": "what colour is it"}], [image])
    ids = torch.tensor(batch.prompts)
    with torch.no_grad():
        ours = model(ids, media=MediaItems(batch.modality_inputs, batch.modality_masks)).logits
        # the release: tower on every view, last remaining layer; MLP; its feature order; LLaMA, bidirectional
        item = batch.modality_inputs["image"][0, 0]
        views, size = anyres.unpack_crops(item)
        features = mlp(tower(pixel_values=views, output_hidden_states=True).hidden_states[-1])
        resolutions = anyres.grid_resolutions("(1x1),...,(3x3)", 32)
        image_embeds = release_arrange(features, newline, size, resolutions, 32, 2)
        at = ids[0].tolist().index(tok.token_id("<image>"))
        n = image_embeds.shape[0]
        text = lm.model.embed_tokens(ids[0])
        embeds = torch.cat([text[:at], image_embeds, text[at + n :]])[None]
        length = embeds.shape[1]
        reference = lm(inputs_embeds=embeds, attention_mask=torch.zeros(1, 1, length, length)).logits
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-4), (ours - reference).abs().max()
    # the prompt is the llava_llada conversation: its system message, then <image>\n and the question
    head = ["<|startoftext|>", "<|start_header_id|>", "system", "<|end_header_id|>"]
    assert batch.prompts[0][:4] == [tok.token_id(t) for t in head]
    user = ["<|start_header_id|>", "user", "<|end_header_id|>"]
    assert batch.prompts[0][at - 3 : at] == [tok.token_id(t) for t in user]
    after = ["what", "colour", "is", "it", "<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>"]
    assert ids[0, at + n :].tolist() == [tok.token_id(t) for t in after]


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from multimodal.llada_v import load_llada_v

    folder, *_ = write_llada_v(tmp_path / "broken")
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"], state["model.image_newline"]
    state["model.vision_resampler.weight"] = torch.zeros(2)
    state["model.mm_projector.2.bias"] = torch.zeros(7)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_llada_v(folder, vision_heads=2)
    message = str(err.value)
    assert "missing keys: model.image_newline, model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected keys: model.vision_resampler.weight" in message
    assert "mis-shaped keys: model.mm_projector.2.bias (7,) (expected (32,))" in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"mm_projector_type": "linear"}, "mm_projector_type='linear'"),
        ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type='flat'"),
        ({"image_aspect_ratio": "pad"}, "image_aspect_ratio='pad'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling="),
    ],
)
def test_unsupported_config_flags_are_refused_by_name(tmp_path, change, named):
    from multimodal.backbone.convert import CheckpointError
    from multimodal.llada_v import load_llada_v

    folder, *_ = write_llada_v(tmp_path / "flags", **change)
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(").replace("[", r"\[")):
        load_llada_v(folder, vision_heads=2)


def test_decoding_never_proposes_the_suppressed_tokens(tmp_path):
    from multimodal.llada_v import SUPPRESSED, sampler_defaults
    from multimodal.sampling import SamplerConfig, SpecialIds, create_sampler

    folder, *_ = write_llada_v(tmp_path / "suppress")
    from multimodal.tokenizer import HFTokenizer

    tok = HFTokenizer(folder)
    config = sampler_defaults(tok, SamplerConfig(steps=4, gen_length=4, block_length=4))
    assert config.forbid_ids == sorted(tok.token_id(t) for t in SUPPRESSED)
    logits = torch.zeros(1, 4, 64)
    logits[..., config.forbid_ids[0]] = 10.0  # the model's favourite is a forbidden token
    logits[..., 20] = 5.0
    x0, commit = create_sampler(config).step(logits, torch.ones(1, 4, dtype=torch.bool), torch.tensor([4]),
                                             SpecialIds(mask_id=2))  # fmt: skip
    assert x0.eq(20).all() and commit.all()


def test_sample_and_chat_on_a_released_llada_v_folder(tmp_path, capsys):
    from PIL import Image

    from multimodal.cli import main
    from multimodal.llada_v import load_llada_v, prompt_batch, sampler_defaults
    from multimodal.sampling import SamplerConfig
    from multimodal.sampling.engine import Engine

    folder, *_ = write_llada_v(tmp_path / "LLaDA-V-tiny")
    picture = tmp_path / "square.png"
    Image.effect_noise((70, 40), 50).convert("RGB").save(picture)
    decoding = {"steps": 4, "gen_length": 8, "block_length": 4}
    model, tok = load_llada_v(folder, vision_heads=2)
    engine = Engine(model, tok, sampler_defaults(tok, SamplerConfig(**decoding, stop_at_eos=True)))
    messages = [{"role": "user", "content": "what colour is it"}]
    expected = engine.texts(engine.generate(prompt_batch(model, tok, messages, [str(picture)])))[0]
    overrides = [a for k, v in decoding.items() for a in ("--set", f"sampler.{k}={v}")]
    args = ["--llada", str(folder), "--image", str(picture), "--vision-heads", "2", *overrides]
    assert main(["sample", *args, "--prompt", "what colour is it"]) == 0
    assert capsys.readouterr().out == f"what colour is it -> {expected}\n"
    assert main(["chat", *args, "--prompt", "what colour is it"]) == 0
    assert capsys.readouterr().out == f"user: what colour is it\nassistant: {expected}\n"


def test_the_server_answers_image_chats_as_the_library_decodes(tmp_path):
    import base64

    from multimodal.sampling import SamplerConfig
    from multimodal.sources import LLaDABackend, Turn
    from tests.test_serve import alone, client, png, running

    folder, *_ = write_llada_v(tmp_path / "LLaDA-V-tiny")
    backend = LLaDABackend(folder, SamplerConfig(steps=4, gen_length=8, block_length=4), vision_heads=2)
    assert backend.accepts == ("image",)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png()).decode()}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what colour is it"}, image]}]
    with running(backend) as (_, _, url):
        chat = client(url).chat.completions.create(model="LLaDA-V-tiny", messages=messages, seed=0)
    batch = backend.chat([Turn("user", "what colour is it", media={"image": [png()]})])
    assert chat.choices[0].message.content == alone(backend, batch)
    assert chat.usage.prompt_tokens == len(batch.prompts[0])
