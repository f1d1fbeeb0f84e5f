"""The `openai` engine: every job becomes one streaming request to an OpenAI-compatible chat-completions server.

No model is loaded here: mlx-lm's or mlx-vlm's server, exo, vLLM or SGLang (alone, distributed, or behind a
router) does the inference, and mlxd stays the live-session front end. The engine runs an event loop on its
own thread, so parsing upstream streams never delays the sockets' loop. It takes jobs from the WorkQueue as
slots free up (`--upstream-concurrency`); a session never has more than one job running (the WorkQueue's
lanes), so a frame that waits is superseded in mlxd and never costs the upstream anything. A cancelled job's
stream is closed within one poll (`CANCEL_POLL_SECONDS`). A probe of the upstream's /models every
`--upstream-health-interval` seconds drives the state that /readyz reports, and names the model when
`--upstream-model` is not given.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections import OrderedDict

import httpx
import structlog

from mlxd import errors
from mlxd.dialogue import Message
from mlxd.engine.base import LOADING, READY, STOPPED, UNAVAILABLE
from mlxd.engine.chat_request import estimated_tokens, image_url, request_body, request_messages
from mlxd.engine.chat_stream import ChatStream, UpstreamFault, error_text
from mlxd.engine.prompts import images_of, within_budget
from mlxd.errors import ClientError
from mlxd.events import ErrorReport, ResponseCompleted, ServerEvent
from mlxd.metrics import Metrics
from mlxd.scheduler import Job, WorkQueue
from mlxd.settings import Settings

log = structlog.get_logger("mlxd.engine.upstream")

CANCEL_POLL_SECONDS = 0.02
ENCODED_IMAGES_KEPT = 16
NO_MODELS = ("the upstream lists no models at {url} (mlx_lm.server lists none when its Hugging Face cache folder "
             "does not exist); name the model with --upstream-model")


class UpstreamEngine:
    def __init__(self, settings: Settings, metrics: Metrics, queue: WorkQueue, token: str | None = None) -> None:
        assert settings.upstream is not None
        self.settings = settings
        self.metrics = metrics
        self.queue = queue
        self.base_url = settings.upstream.rstrip("/")
        self.model = settings.upstream_model
        self.model_reason = ("--upstream-model" if self.model else f"the first model listed at {self.base_url}/models")
        self.modalities = tuple(settings.upstream_modalities.split(","))
        self.state = LOADING
        self.error: str | None = None
        self._token = token
        self._instance = secrets.token_hex(4)  # session keys stay distinct across mlxd processes sharing a router
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="mlxd-upstream", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._in_flight: dict[asyncio.Task[None], Job] = {}
        self._encoded: OrderedDict[str | bytes, str] = OrderedDict()

    def status(self) -> dict[str, object]:
        return {
            "model": self.model or self.base_url,
            "model_reason": self.model_reason,
            "state": self.state,
            "modalities": list(self.modalities),
            "error": self.error,
            "load_seconds": None,
            "upstream": self.base_url,
        }

    def start(self) -> None:
        self._thread.start()
        self._started.wait(5)

    @property
    def busy(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> list[Job]:
        waiting = self.queue.close()
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        self.state = STOPPED
        return waiting

    def forget(self, session_id: str) -> None:
        """Nothing is kept per session here: the upstream holds the conversation's cache."""

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        settings = self.settings
        timeout = httpx.Timeout(settings.upstream_connect_timeout, read=settings.upstream_read_timeout)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        limits = httpx.Limits(max_connections=settings.upstream_concurrency + 1,
                              max_keepalive_connections=settings.upstream_concurrency + 1)
        async with httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits, trust_env=False) as client:
            helpers = [asyncio.create_task(loop) for loop in
                       (self._consume(client), self._probe(client), self._watch_cancels())]
            await self._stopping.wait()
            for task, job in list(self._in_flight.items()):
                job.cancelled = True
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _consume(self, client: httpx.AsyncClient) -> None:
        slots = asyncio.Semaphore(self.settings.upstream_concurrency)
        while True:
            await slots.acquire()  # a job is taken only when it can be sent: until then a newer frame may replace it
            job = await self.queue.take_async()
            if job is None:
                return
            task = asyncio.create_task(self._serve(client, job))
            self._in_flight[task] = job
            task.add_done_callback(lambda done: (self._in_flight.pop(done, None), slots.release()))

    async def _watch_cancels(self) -> None:
        """A cancel, a disconnect or a shutdown sets `job.cancelled`: close that job's stream at once."""
        closing: set[asyncio.Task[None]] = set()
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            closing &= self._in_flight.keys()
            for task, job in list(self._in_flight.items()):
                if job.cancelled and task not in closing:
                    closing.add(task)
                    task.cancel()

    async def _serve(self, client: httpx.AsyncClient, job: Job) -> None:
        stream = ChatStream(job, self.metrics)
        outcome: str | None = None
        generation: int | None = None
        self.metrics.upstream_in_flight.inc()
        try:
            if job.cancelled:
                event: ServerEvent = stream.completed(job.cancel_reason)
            else:
                if job.is_frame:
                    self.metrics.frame_age.observe(stream.started - job.received_at)
                model = await self._model_name(client)
                await self._image_urls(images_of(job.turn), job)  # a bad new image is refused before it is kept
                messages, generation = self._prompt(job)
                urls = await self._image_urls(images_of(messages), job)
                body = request_body(model, request_messages(messages, job.prompt_instructions, urls), job.config,
                                    job.max_tokens)
                outcome = "error"
                await stream.run(client, f"{self.base_url}/chat/completions", body,
                                 {"X-Session-Id": f"{self._instance}-{job.session_id}"})
                outcome = stream.finish_reason
                event = stream.completed(stream.finish_reason or "stop")
        except asyncio.CancelledError:
            outcome = outcome and job.cancel_reason
            event = stream.completed(job.cancel_reason)
        except UpstreamFault as fault:
            self.metrics.upstream_errors.labels(reason=fault.reason).inc()
            if not stream.accepted and fault.reason in ("unreachable", "timeout"):
                self._set_state(UNAVAILABLE, fault.message)
            log.warning("upstream_request_failed", session=job.session_id, request=job.request_id,
                        reason=fault.reason, error=fault.message)
            event = stream.failed(fault)
        except ClientError as exc:
            event = ErrorReport(exc.code, exc.message, job.request_id, job.input_type)
        except Exception as exc:
            log.exception("upstream_request_crashed", session=job.session_id, request=job.request_id)
            event = ErrorReport(errors.INTERNAL, f"the upstream request failed: {type(exc).__name__}",
                                job.request_id, job.input_type)
        finally:
            self.metrics.upstream_in_flight.dec()
        if outcome is not None:
            self.metrics.upstream_requests.labels(outcome=outcome).inc()
        if isinstance(event, ResponseCompleted):
            job.record_answer(event.full_text, event.finish_reason, generation)
        job.finished = True
        self.queue.done(job)
        job.emit(event)

    def _prompt(self, job: Job) -> tuple[list[Message], int | None]:
        """The messages to send: a conversation's turn is committed now, and the conversation cut to
        --context-tokens (estimated: the upstream's tokenizer is not at hand)."""
        if job.dialogue is None:
            return list(job.turn), None
        messages, generation = job.dialogue.open_turn(job.turn)
        return within_budget(messages, estimated_tokens, self.settings.context_tokens), generation

    async def _image_urls(self, images: list[str | bytes], job: Job) -> list[str]:
        """Each image re-encoded once: a conversation's earlier images come back every turn."""
        if images and "image" not in self.modalities:
            raise errors.model_text_only(self.model or self.base_url, job.request_id)
        urls = []
        for data in images:
            url = self._encoded.pop(data, None)
            if url is None:
                try:
                    url = await asyncio.to_thread(image_url, data, self.settings)
                except ClientError as exc:
                    exc.request_id = job.request_id
                    raise
            self._encoded[data] = url
            while len(self._encoded) > ENCODED_IMAGES_KEPT:
                self._encoded.popitem(last=False)
            urls.append(url)
        return urls

    async def _model_name(self, client: httpx.AsyncClient) -> str:
        if self.model is None:
            await self._check(client)
        assert self.model is not None
        return self.model

    async def _probe(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                await self._check(client)
            except UpstreamFault as fault:
                self._set_state(UNAVAILABLE, fault.message)
            else:
                self._set_state(READY, None)
            await asyncio.sleep(self.settings.upstream_health_interval)

    async def _check(self, client: httpx.AsyncClient) -> None:
        """GET /models: the upstream answers, and (once) which model to name. Raises UpstreamFault."""
        url = f"{self.base_url}/models"
        try:
            response = await client.get(url, timeout=self.settings.upstream_connect_timeout)
        except httpx.HTTPError as exc:
            raise UpstreamFault(errors.MODEL_UNAVAILABLE, "unreachable",
                                f"cannot reach the upstream at {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise UpstreamFault(errors.MODEL_UNAVAILABLE, f"http_{response.status_code}",
                                f"the upstream answered HTTP {response.status_code} at {url}: "
                                f"{await error_text(response)}")
        if self.model is not None:
            return
        try:
            ids = [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            ids = []
        if not ids:
            raise UpstreamFault(errors.MODEL_UNAVAILABLE, "no_models", NO_MODELS.format(url=url))
        self.model = ids[0]

    def _set_state(self, state: str, error: str | None) -> None:
        if state == self.state and error == self.error:
            return
        previous, self.state, self.error = self.state, state, error
        self.metrics.model_loaded.set(1 if state == READY else 0)
        if state == READY:
            self.metrics.model_info.labels(model=self.model, modalities=",".join(self.modalities)).set(1)
            log.info("upstream_ready", upstream=self.base_url, model=self.model, was=previous)
        else:
            log.warning("upstream_unavailable", upstream=self.base_url, error=error, was=previous)
