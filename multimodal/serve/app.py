"""The HTTP side of `mmdiff serve`: OpenAI routes, server-sent events, the live page, graceful drain.

Routes: ``/v1/chat/completions`` (text and image content parts), ``/v1/completions``,
``/v1/audio/transcriptions`` (multipart upload, as OpenAI's), ``/v1/models``, ``/health`` (for load
balancers: 200 while taking requests, 503 while draining) and ``/`` (a page that shows the denoising
live). Every request becomes one `Job` per choice for the decoding thread (scheduler.py). Answers
grow block by block: a block's tokens are final once it is decoded, so streamed text is sent as
each block ends, and a choice is complete as soon as a final block holds EOS / EoT, a stop string
or ``max_tokens`` tokens, at which point its job is cancelled and its slot freed (the text could
not change any more). A client that disconnects cancels its jobs the same way. On SIGTERM / SIGINT
the server stops taking requests (503) and finishes the ones it has before it exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from multimodal.sampling import SamplerError
from multimodal.serve.protocol import ChatRequest, CompletionRequest, Decoding, error, new_id, now, usage
from multimodal.serve.request_sampler import request_sampler
from multimodal.serve.scheduler import Draining, Job, QueueFull, Scheduler
from multimodal.sources import Backend, RequestError
from multimodal.types import PromptBatch

log = logging.getLogger(__name__)


class Answer:
    """One choice's text as its blocks become final: cut at EOS / EoT, at `max_tokens` and at stop strings.

    With stop strings, the last characters that could begin one are held back until the answer is
    complete, so a streamed answer never shows part of a stop string.
    """

    def __init__(self, backend: Backend, max_tokens: int, stops: list[str]):
        self.engine, self.max_tokens, self.stops = backend.engine, max_tokens, stops
        self.text, self.sent, self.finish, self.tokens = "", "", None, 0
        self.hold = max((len(s) for s in stops), default=1) - 1

    def update(self, tokens: list[int], complete: bool) -> str:
        """Take the tokens final so far (all of them when `complete`); return the new text to send."""
        ids = tokens[: self.max_tokens]
        special = self.engine.special
        ends = [i for i, t in enumerate(ids) if t in (special.eos_id, special.eot_id)]
        if ends:
            ids, self.finish = ids[: ends[0]], "stop"
        text = self.engine.text(ids)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            text, self.finish = text[: min(hits)], "stop"
        if self.finish is None and (complete or len(tokens) >= self.max_tokens):
            self.finish = "length"
        self.text, self.tokens = text, len(ids)
        ready = text if self.finish or not self.stops else text[: max(len(text) - self.hold, 0)]
        delta = ready[len(self.sent) :] if ready.startswith(self.sent) else ""
        self.sent = self.sent + delta
        return delta


class Service:
    """Submits a request's jobs and turns their events into OpenAI responses."""

    def __init__(self, backend: Backend, scheduler: Scheduler):
        self.backend, self.scheduler = backend, scheduler

    def jobs(self, batches: list[PromptBatch], body: Decoding, max_tokens: int | None) -> tuple[list[Job], int]:
        """One job per choice (prompt x n); returns them and the answer length each is cut to."""
        sampler = request_sampler(self.backend.engine.sampler_config, max_tokens, body.temperature, body.sampler)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        jobs = []
        for p, batch in enumerate(batches):
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j
                want = body.stream and body.denoising
                job = Job(batch, sampler, seed, want, p * body.n + j, events, loop)
                jobs.append(job)
        return jobs, max_tokens or sampler.config.gen_length

    def submit(self, jobs: list[Job]) -> Response | None:
        """Queue every job, or none: an error response if the queue is full, draining or the shape is bad."""
        try:
            for job in jobs:
                self.scheduler.submit(job)
        except (QueueFull, Draining, SamplerError) as err:
            for job in jobs:
                job.cancel()
            if isinstance(err, QueueFull):
                return error(429, f"too many requests: {err}", "rate_limit_error", code="rate_limit_exceeded")
            if isinstance(err, Draining):
                return error(503, str(err), "server_error", code="service_unavailable")
            return error(400, str(err), "invalid_request_error", "max_tokens", "context_length_exceeded")
        return None

    async def events(
        self, request: Request, jobs: list[Job], answers: list[Answer]
    ) -> AsyncIterator[tuple[int, str, Any]]:
        """The jobs' events until every answer is complete: ``("text", delta)``, ``("step", payload)`` and
        ``("error", message)``; cancels them all if the client goes away."""
        queue = jobs[0].events
        open_ = set(range(len(jobs)))
        try:
            while open_:
                try:
                    index, kind, payload = await asyncio.wait_for(queue.get(), 0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        log.info("client went away: %d jobs cancelled", len(open_))
                        return
                    continue
                if index not in open_:
                    continue
                if kind == "error":
                    yield index, "error", payload
                    return
                if kind == "step":
                    yield index, "step", payload
                    continue
                complete = kind == "done"
                delta = answers[index].update(payload["tokens"] if complete else payload, complete)
                if delta or answers[index].finish:
                    yield index, "text", delta
                if answers[index].finish:
                    open_.discard(index)
                    jobs[index].cancel()  # complete: free the slot now (the text cannot change)
        finally:
            for job in jobs:
                job.cancel()

    async def respond(
        self, request: Request, batches: list[PromptBatch], body: Decoding, max_tokens: int | None, chat: bool
    ) -> Response:
        try:
            jobs, length = self.jobs(batches, body, max_tokens)
        except RequestError as err:
            return error(400, str(err), "invalid_request_error", err.param)
        refused = self.submit(jobs)
        if refused is not None:
            return refused
        answers = [Answer(self.backend, length, body.stops) for _ in jobs]
        prompt_tokens = sum(len(b.prompts[0]) for b in batches) * body.n
        if body.stream:
            return StreamingResponse(
                self.stream(request, jobs, answers, body, chat, prompt_tokens), media_type="text/event-stream"
            )
        async for _, kind, payload in self.events(request, jobs, answers):
            if kind == "error":
                return error(400, payload, "invalid_request_error")
        if any(a.finish is None for a in answers):  # the client went away
            return Response(status_code=499)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": a.text}, "finish_reason": a.finish}
            if chat
            else {"index": i, "text": a.text, "logprobs": None, "finish_reason": a.finish}
            for i, a in enumerate(answers)
        ]
        body_out = {
            "id": new_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion" if chat else "text_completion",
            "created": now(),
            "model": self.backend.model_id,
            "choices": choices,
            "usage": usage(prompt_tokens, sum(a.tokens for a in answers)),
        }
        return JSONResponse(body_out)

    async def stream(
        self, request: Request, jobs: list[Job], answers: list[Answer], body: Decoding, chat: bool, prompt_tokens: int
    ) -> AsyncIterator[str]:
        rid, created, model = new_id("chatcmpl" if chat else "cmpl"), now(), self.backend.model_id
        kind_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str | None, finish: str | None, **extra: Any) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": index, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            data = {"id": rid, "object": kind_name, "created": created, "model": model, "choices": [choice], **extra}
            return f"data: {json.dumps(data)}\n\n"

        if chat:
            for i in range(len(jobs)):
                yield chunk(i, None, None).replace('"delta": {}', '"delta": {"role": "assistant", "content": ""}', 1)
        async for index, kind, payload in self.events(request, jobs, answers):
            if kind == "error":
                yield f"data: {json.dumps({'error': {'message': payload, 'type': 'invalid_request_error'}})}\n\n"
                return
            if kind == "step":
                tokens = [self.backend.token_text(t) for t in payload["tokens"]]
                step = {"index": index, "positions": payload["positions"], "tokens": tokens}
                yield chunk(index, None, None, denoising=step)
                continue
            yield chunk(index, payload, answers[index].finish)
        if (body.stream_options or {}).get("include_usage"):
            data = {"id": rid, "object": kind_name, "created": created, "model": model, "choices": []}
            data["usage"] = usage(prompt_tokens, sum(a.tokens for a in answers))
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"


def create_app(backend: Backend, scheduler: Scheduler) -> FastAPI:
    """The FastAPI application over a started scheduler (stopped when the app shuts down)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(scheduler.stop, 60.0)

    app = FastAPI(title="mmdiff", lifespan=lifespan)
    service = Service(backend, scheduler)
    model_id = backend.model_id

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error", where or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), "invalid_request_error")

    def unknown_model(name: str) -> JSONResponse | None:
        if name == model_id:
            return None
        return error(
            404,
            f"The model '{name}' does not exist (this server serves '{model_id}')",
            "invalid_request_error",
            "model",
            "model_not_found",
        )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        html = resources.files("multimodal.serve").joinpath("page.html").read_text()
        return html.replace("{{MODEL}}", model_id).replace("{{ACCEPTS}}", ",".join(backend.accepts))

    @app.get("/health")
    async def health() -> JSONResponse:
        state = {
            "status": "draining" if scheduler.draining else "ok",
            "running": scheduler.running,
            "waiting": scheduler.waiting,
        }
        return JSONResponse(state, status_code=503 if scheduler.draining else 200)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "mmdiff"}]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> Any:
        return unknown_model(name) or {"id": model_id, "object": "model", "created": 0, "owned_by": "mmdiff"}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        if (bad := unknown_model(body.model)) is not None:
            return bad
        try:
            batch = await run_in_threadpool(lambda: backend.chat(body.turns()))
        except RequestError as err:
            return error(400, str(err), "invalid_request_error", err.param)
        return await service.respond(request, [batch], body, body.max_completion_tokens or body.max_tokens, True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        if (bad := unknown_model(body.model)) is not None:
            return bad
        if body.echo:
            return error(400, "echo is not supported", "invalid_request_error", "echo")
        try:
            batches = await run_in_threadpool(lambda: [backend.completion(p) for p in body.prompts()])
        except RequestError as err:
            return error(400, str(err), "invalid_request_error", err.param)
        return await service.respond(request, batches, body, body.max_tokens, False)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float | None, Form()] = None,
        language: Annotated[str | None, Form()] = None,
    ) -> Response:
        if (bad := unknown_model(model)) is not None:
            return bad
        if response_format not in ("json", "text"):
            return error(
                400,
                f"response_format '{response_format}' is not supported (json, text)",
                "invalid_request_error",
                "response_format",
            )
        audio = await file.read()
        try:
            batch = await run_in_threadpool(backend.transcription, audio, prompt)
        except RequestError as err:
            return error(400, str(err), "invalid_request_error", err.param)
        body = Decoding(model=model, temperature=temperature)
        response = await service.respond(request, [batch], body, None, False)
        if not isinstance(response, JSONResponse) or response.status_code != 200:
            return response
        text = json.loads(response.body)["choices"][0]["text"]
        return PlainTextResponse(text) if response_format == "text" else JSONResponse({"text": text})

    return app
