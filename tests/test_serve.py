"""`mmdiff serve` on loopback, driven by the real openai client: answers equal the library's decoding
alone, concurrent mixed requests share one batch, streaming, errors, the queue bound, disconnects and
the graceful drain."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import signal
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from multimodal.serve.app import create_app  # noqa: E402
from multimodal.serve.request_sampler import request_sampler  # noqa: E402
from multimodal.serve.scheduler import Scheduler  # noqa: E402
from multimodal.serve.server import build_server  # noqa: E402
from multimodal.sources import RunBackend  # noqa: E402
from multimodal.train.build import build_run  # noqa: E402
from multimodal.train.config import load_experiment  # noqa: E402

DIGITS = [
    "task.train_size=50",
    "task.test_size=4",
    "task.validation_size=4",
    "backbone.max_seq_len=256",
    "sampler.block_length=8",
    "sampler.gen_length=16",
    "sampler.steps=16",
    "sampler.stop_at_eos=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(backend, start_scheduler: bool = True, **kwargs):
    """A server on a free loopback port in a thread; yields (server, scheduler, base URL)."""
    server = build_server(backend, port=free_port(), log_level="warning", **kwargs)
    scheduler = server.scheduler
    if not start_scheduler:  # hold the decoding thread back: requests stay queued
        scheduler.stop()
        sizes = kwargs.get("max_batch", 32), kwargs.get("max_queue", 64)
        scheduler = Scheduler(backend.engine, backend.engine.sampler_config, *sizes)
        server.config.app = create_app(backend, scheduler)
        server.config.loaded = False
        server.scheduler = scheduler
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield server, scheduler, f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        scheduler.stop(10)
        thread.join(20)


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def backend():
    torch.manual_seed(0)
    return RunBackend(build_run(load_experiment("digits_reverse", DIGITS)))


@pytest.fixture(scope="module")
def digits_server(backend):
    with running(backend, max_batch=8, max_queue=32) as handle:
        yield handle


def alone(backend, batch, max_tokens=None, temperature=None, seed=0, sampler=None) -> str:
    """The library's own decoding of one request (Engine.generate, no server), cut as the server cuts."""
    s = request_sampler(backend.engine.sampler_config, max_tokens, temperature, sampler)
    out = backend.engine.generate(batch, s, generator=torch.Generator().manual_seed(seed))
    return backend.engine.text(out.generated[0][: max_tokens or s.config.gen_length].tolist())


def test_completions_and_chat_answer_as_the_library_decodes(backend, digits_server):
    _, _, url = digits_server
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["digits_reverse"]
    done = api.completions.create(model="digits_reverse", prompt="1234=", max_tokens=12, seed=3)
    assert done.choices[0].text == alone(backend, backend.completion("1234="), 12, seed=3)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.prompt_tokens == 5
    chat = api.chat.completions.create(model="digits_reverse", messages=[{"role": "user", "content": "98765="}], seed=1)
    assert chat.choices[0].message.content == alone(backend, backend.completion("98765="), seed=1)
    turns = [
        {"role": "user", "content": "12="},
        {"role": "assistant", "content": "21"},
        {"role": "user", "content": "345="},
    ]
    chat = api.chat.completions.create(model="digits_reverse", messages=turns, seed=2, temperature=0.8)
    from multimodal.serve.protocol import ChatRequest

    batch = backend.chat(ChatRequest(model="x", messages=turns).turns())
    assert len(batch.prompts[0]) == len("12=") + len("21") + 1 + len("345=")  # history answer + EOS, then the prompt
    assert chat.choices[0].message.content == alone(backend, batch, temperature=0.8, seed=2)


def test_concurrent_mixed_requests_share_the_batch_and_answer_as_alone(backend, digits_server):
    _, scheduler, url = digits_server
    api = client(url)
    g = torch.Generator().manual_seed(0)
    requests = []
    for i in range(16):
        prompt = "".join(str(int(d)) for d in torch.randint(0, 10, (4 + i % 9,), generator=g)) + "="
        extra = {"steps": 8 * (1 + i % 3) * (1 + i % 2)} if i % 4 else {"name": "threshold", "threshold": 0.5}
        requests.append((prompt, (8, 16, 24)[i % 3], (0.0, 0.7)[i % 2], 10 + i, extra))

    def ask(r):
        prompt, max_tokens, temperature, seed, extra = r
        out = api.completions.create(
            model="digits_reverse",
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            extra_body={"sampler": extra},
        )
        return out.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, requests))
    assert scheduler.batch.peak > 1  # requests decoded together
    for (prompt, max_tokens, temperature, seed, extra), answer in zip(requests, answers, strict=True):
        assert answer == alone(backend, backend.completion(prompt), max_tokens, temperature, seed, extra), prompt


def test_streaming_sends_text_per_block_and_the_denoising_steps(backend, digits_server):
    _, _, url = digits_server
    api = client(url)
    whole = api.completions.create(model="digits_reverse", prompt="5678=", max_tokens=24, seed=4).choices[0].text
    pieces = api.completions.create(model="digits_reverse", prompt="5678=", max_tokens=24, seed=4, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == whole
    stream = api.chat.completions.create(
        model="digits_reverse",
        messages=[{"role": "user", "content": "5678="}],
        max_tokens=24,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"denoising": True},
    )
    text, positions, finish, used = "", set(), None, None
    for chunk in stream:
        if chunk.usage is not None:
            used = chunk.usage
            continue
        step = getattr(chunk, "denoising", None)
        if step:
            positions.update(step["positions"])
            assert len(step["tokens"]) == len(step["positions"])
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == whole and finish in ("stop", "length") and used.prompt_tokens == 5
    assert positions and min(positions) == 0 and max(positions) < 24


def test_bad_requests_get_openai_errors(digits_server):
    _, _, url = digits_server
    post = lambda path, body: httpx.post(f"{url}{path}", json=body, timeout=30)  # noqa: E731
    user = [{"role": "user", "content": "12="}]
    cases = [
        ({"model": "nope", "prompt": "1="}, 404, "model_not_found", "model"),
        ({"model": "digits_reverse", "prompt": "1=", "temperature": 5}, 400, None, "temperature"),
        ({"model": "digits_reverse", "prompt": "1=", "sampler": {"cache": "dual"}}, 400, None, "sampler"),
        ({"model": "digits_reverse", "prompt": "1=", "sampler": {"name": "nope"}}, 400, None, "sampler"),
        ({"model": "digits_reverse", "prompt": "1=", "sampler": {"steps": 5}}, 400, None, "sampler"),
        ({"model": "digits_reverse", "prompt": "1" * 300 + "="}, 400, "context_length_exceeded", "max_tokens"),
    ]
    for body, status, code, param in cases:
        r = post("/v1/completions", body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert err["code"] == code and err["param"] == param, err
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"x").decode()}}
    chats = [
        ([{"role": "user", "content": [{"type": "text", "text": "12="}, image]}], "takes no images"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}], "data: URL"),
        ([{"role": "system", "content": "be brief"}, *user], "no system message"),
        ([{"role": "assistant", "content": "hi"}], "end with a user turn"),
    ]
    for messages, message in chats:
        r = post("/v1/chat/completions", {"model": "digits_reverse", "messages": messages})
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="nope", messages=user)
    files = {"file": ("a.wav", b"RIFF")}
    r = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "digits_reverse"})
    assert r.status_code == 400 and "does not transcribe" in r.json()["error"]["message"]


def test_a_full_queue_answers_429_and_a_draining_server_503(backend):
    with running(backend, start_scheduler=False, max_batch=1, max_queue=2) as (_, scheduler, url):
        api = client(url)
        ask = lambda: api.completions.create(model="digits_reverse", prompt="12=", seed=0)  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(ask) for _ in range(2)]
            deadline = time.time() + 10
            while scheduler.waiting < 2 and time.time() < deadline:
                time.sleep(0.02)
            with pytest.raises(openai.RateLimitError, match="too many requests"):
                ask()
            assert httpx.get(f"{url}/health").json() == {"status": "ok", "running": 0, "waiting": 2}
            scheduler.start()
            assert [f.result(30).choices[0].text for f in held] == [alone(backend, backend.completion("12="))] * 2
        scheduler.drain()
        with pytest.raises(openai.InternalServerError, match="shutting down"):
            ask()
        assert httpx.get(f"{url}/health").status_code == 503


def test_a_client_that_goes_away_frees_its_slot(digits_server):
    _, scheduler, url = digits_server
    served = scheduler.served
    body = {"model": "digits_reverse", "prompt": "123=", "max_tokens": 200, "stream": True, "denoising": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())  # the first step arrived: the request is decoding
    deadline = time.time() + 20
    while (scheduler.running or scheduler.waiting) and time.time() < deadline:
        time.sleep(0.05)
    assert scheduler.running == 0 and scheduler.served == served  # left at a block boundary, never finished


def test_sigterm_drains_open_requests_before_exit(backend):
    with running(backend, max_batch=4) as (server, scheduler, url):
        api = client(url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(api.completions.create, model="digits_reverse", prompt="321=", max_tokens=160, seed=5)
            deadline = time.time() + 10
            while not scheduler.running and time.time() < deadline:
                time.sleep(0.01)
            server.handle_exit(signal.SIGTERM, None)
            assert scheduler.draining
            answer = pending.result(60).choices[0].text  # finished, not cut
        assert answer == alone(backend, backend.completion("321="), 160, seed=5)
        deadline = time.time() + 20
        while not server.should_exit and time.time() < deadline:  # the exit follows once nothing is open
            time.sleep(0.05)
        assert server.should_exit


def test_a_draining_server_answers_503_until_its_open_requests_finish(backend):
    with running(backend, start_scheduler=False, max_batch=1, max_queue=2) as (server, scheduler, url):
        api = client(url)
        ask = lambda: api.completions.create(model="digits_reverse", prompt="12=", seed=0)  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(ask)
            deadline = time.time() + 10
            while scheduler.waiting < 1 and time.time() < deadline:
                time.sleep(0.02)
            server.handle_exit(signal.SIGTERM, None)
            time.sleep(0.3)
            assert not server.should_exit  # a request is still open: the replica stays up
            with pytest.raises(openai.InternalServerError, match="shutting down"):
                ask()  # accepted and told 503, not refused
            assert httpx.get(f"{url}/health").status_code == 503
            scheduler.start()
            assert held.result(30).choices[0].text == alone(backend, backend.completion("12="))
        deadline = time.time() + 20
        while not server.should_exit and time.time() < deadline:
            time.sleep(0.05)
        assert server.should_exit  # nothing open any more: uvicorn is told to exit


def png(colour=(255, 0, 0), size=40) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_image_and_audio_requests_reach_the_run_task(tmp_path):
    vqa = [
        f"task.data_dir={tmp_path / 'shapes'}",
        "task.shapes={train_scenes: 20, validation_scenes: 4, test_scenes: 4, shard_size: 10}",
        "modalities.image.encoder_args={image_size: 32, widths: [16, 16]}",
    ]
    backend = RunBackend(build_run(load_experiment("shapes_vqa", vqa)))
    with running(backend) as (_, _, url):
        url_image = "data:image/png;base64," + base64.b64encode(png()).decode()
        question = {"type": "text", "text": "What colour is the circle?"}
        content = [question, {"type": "image_url", "image_url": {"url": url_image}}]
        messages = [{"role": "user", "content": content}]
        chat = client(url).chat.completions.create(model="shapes_vqa", messages=messages, seed=0)
        layout = backend.run.task.layout_for_prompt("What colour is the circle?", {"image": png()})
        batch = backend.run.task.prompt_batch([layout], backend.engine.tokenizer, backend.engine.modalities)
        assert chat.choices[0].message.content == alone(backend, batch)
        broken = [question, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
        body = {"model": "shapes_vqa", "messages": [{"role": "user", "content": broken}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 400 and "corrupt image" in r.json()["error"]["message"]

    from tests.test_asr import flac

    spoken = (
        "{train_size: 24, validation_size: 4, test_size: 6, voices: [en-us, en-gb-x-rp], held_out_voices: [en-us+f2]}"
    )
    asr = [
        f"task.data_dir={tmp_path / 'spoken'}",
        f"task.spoken={spoken}",
        "modalities.audio.encoder_args={width: 32, layers: 1, heads: 2, ctc_vocab: 256}",
    ]
    backend = RunBackend(build_run(load_experiment("spoken_asr", asr)))
    with running(backend) as (_, _, url):
        clip = flac(1.0)
        text = client(url).audio.transcriptions.create(model="spoken_asr", file=("clip.flac", clip))
        layout = backend.run.task.layout_for_prompt("", {"audio": clip})
        batch = backend.run.task.prompt_batch([layout], backend.engine.tokenizer, backend.engine.modalities)
        assert text.text == alone(backend, batch)  # temperature 0: no noise, whatever seed the server draws
        form = {"model": "spoken_asr", "response_format": "text"}
        plain = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("c.flac", clip)}, data=form)
        assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/plain")
        files = {"file": ("c.flac", b"not audio")}
        bad = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "spoken_asr"})
        assert bad.status_code == 400 and "corrupt audio" in bad.json()["error"]["message"]


def test_a_released_llada_folder_chats_through_its_template(tmp_path, capsys):
    from multimodal.backbone import backbone_preset, create_backbone
    from multimodal.backbone.convert import save_llada_checkpoint
    from multimodal.chat import chat_prompt_ids
    from multimodal.cli import main
    from multimodal.sampling import SamplerConfig
    from multimodal.sources import LLaDABackend
    from tests.test_chat import llada_tokenizer_folder

    torch.manual_seed(0)
    folder = tmp_path / "LLaDA-tiny-Instruct"
    save_llada_checkpoint(create_backbone(backbone_preset("llada_tiny", max_seq_len=128, init_std=0.2)), folder)
    llada_tokenizer_folder(folder)
    backend = LLaDABackend(folder, SamplerConfig(steps=8, gen_length=16, block_length=8))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    with running(backend) as (_, _, url):
        chat = client(url).chat.completions.create(model="LLaDA-tiny-Instruct", messages=messages, seed=0)
    batch_ids = chat_prompt_ids(backend.engine.tokenizer, messages)
    from multimodal.types import PromptBatch

    assert chat.choices[0].message.content == alone(backend, PromptBatch([batch_ids]))
    assert chat.usage.prompt_tokens == len(batch_ids)
    assert main(["serve", "--llada", str(folder), "--set", "train.max_steps=3"]) == 2  # refused before serving
    assert "only sampler.* overrides" in capsys.readouterr().err
    assert main(["serve", "--llada", str(folder), "--set", "sampler.block_length=7"]) == 2
