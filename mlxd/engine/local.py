"""The engine: one thread that owns the model and makes every MLX call.

MLX streams are thread-local, so the thread that loads the model must run every generation. The engine
takes work from the WorkQueue, decodes the image of the work it chose (a dropped frame is never decoded) and
generates. Requests of different sessions are decoded together (continuous batching, batching.py):
they join the batch and leave it between steps. What a batch cannot take (a vision request whose sampling
differs from the running batch's, or that continues a conversation) is generated alone, the batch waiting
meanwhile. Events go back through each job's `emit`, which never blocks: a slow client only slows itself.
Cancellation is checked between steps, so a cancel or a disconnect takes effect within one token.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import structlog
from PIL import Image

from mlxd import errors
from mlxd.dialogue import Message
from mlxd.engine.base import FAILED, LOADING, READY, STOPPED
from mlxd.engine.batching import TextBatch, VisionBatch, batch_for
from mlxd.engine.conversation import Conversation
from mlxd.engine.model_choice import ModelChoice, resolve
from mlxd.engine.models import Chunk, LoadedModel, VisionModel, load_model, local_path
from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.prompts import images_of, within_budget
from mlxd.engine.vision_cache import VisionFeatureCache
from mlxd.errors import ClientError
from mlxd.events import ErrorReport, ResponseCompleted, ResponseStarted, ServerEvent, TokenText
from mlxd.media import decode_image
from mlxd.metrics import Metrics
from mlxd.scheduler import Job, WorkQueue
from mlxd.settings import Settings

log = structlog.get_logger("mlxd.engine")

DECODED_IMAGES_KEPT = 16


@dataclass
class _Response:
    """A response being generated: what has been sent so far, for the completion and the conversation."""

    job: Job
    started: float
    conversation: Conversation | None = None
    generation: int | None = None
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    last: Chunk | None = None
    image_tokens: int = 0

    def add(self, chunk: Chunk, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        if chunk.text:
            self.parts.append(chunk.text)
            self.job.emit(TokenText(self.job.request_id, chunk.text))
        self.last = chunk

    def completed(self, finish_reason: str) -> ResponseCompleted:
        last = self.last or Chunk("", None, 0, 0)
        return ResponseCompleted(
            request_id=self.job.request_id,
            input_type=self.job.input_type,
            full_text="".join(self.parts),
            finish_reason=finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            inference_time=time.monotonic() - self.started,
            time_to_first_token=None if self.first_token_at is None else self.first_token_at - self.started,
            cached_tokens=last.cached_tokens,
            image_tokens=self.image_tokens,
        )


class Engine:
    def __init__(self, choice: ModelChoice, settings: Settings, metrics: Metrics, queue: WorkQueue) -> None:
        self.choice = choice
        self.settings = settings
        self.metrics = metrics
        self.queue = queue
        self.state = LOADING
        self.error: str | None = None
        self.model: LoadedModel | None = None
        self.load_seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="mlxd-engine", daemon=True)
        self._batch: TextBatch | VisionBatch | None = None
        self._running: dict[int, _Response] = {}
        self._conversations: dict[str, Conversation] = {}
        self._forgotten: deque[str] = deque()
        self._decoded: OrderedDict[str | bytes, Image.Image] = OrderedDict()
        self.prefix_cache = PrefixCache(settings.prefix_cache_bytes, settings.prefix_cache_entries)
        self.vision_cache = VisionFeatureCache(settings.vision_cache_size)
        metrics.watch_cache("prefix_cache", "KV caches of prompt prefixes shared across sessions",
                            self.prefix_cache.stats)
        metrics.watch_cache("vision_cache", "Vision-tower outputs kept by image content", self.vision_cache.stats)

    @property
    def modalities(self) -> tuple[str, ...] | None:
        return None if self.model is None else self.model.modalities

    def status(self) -> dict[str, object]:
        return {
            "model": self.choice.name,
            "model_reason": self.choice.reason,
            "state": self.state,
            "modalities": list(self.modalities or ()),
            "error": self.error,
            "load_seconds": self.load_seconds,
        }

    def start(self) -> None:
        self._thread.start()

    @property
    def busy(self) -> bool:
        """The engine thread is still running (after `stop`: it did not finish in time)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> list[Job]:
        """Stop taking work, cancel what runs, and return the jobs that never started."""
        waiting = self.queue.close()
        self._thread.join(timeout)
        if self.state != FAILED:
            self.state = STOPPED
        return waiting

    def forget(self, session_id: str) -> None:
        """The session is gone: its conversation is dropped on the engine thread (callable from any thread)."""
        self._forgotten.append(session_id)

    def _run(self) -> None:
        if not self._load():
            while (job := self.queue.take()) is not None:
                refusal = errors.model_unavailable(self.error, job.request_id)
                self._finish(job, ErrorReport(refusal.code, refusal.message, job.request_id, job.input_type))
            return
        self._batch = self._new_batch()
        while self._take_work():
            while self._forgotten:
                self._conversations.pop(self._forgotten.popleft(), None)
            if self._running:
                self._step()

    def _new_batch(self) -> TextBatch | VisionBatch:
        return batch_for(self.model, self.settings.batch_size, self.prefix_cache,  # type: ignore[arg-type]
                         self.vision_cache)

    def _load(self) -> bool:
        started = time.perf_counter()
        log.info("model_loading", model=self.choice.name, reason=self.choice.reason)
        try:
            path = local_path(resolve(self.choice.name))
            self.model = load_model(self.choice.name, path)
        except Exception as exc:
            self.state, self.error = FAILED, f"{type(exc).__name__}: {exc}"
            log.error("model_load_failed", model=self.choice.name, error=self.error)
            return False
        if isinstance(self.model, VisionModel):
            self.vision_cache.install(self.model.model)
        self.load_seconds = round(time.perf_counter() - started, 3)
        self.state = READY
        modalities = list(self.model.modalities)
        self.metrics.model_loaded.set(1)
        self.metrics.model_load_seconds.set(self.load_seconds)
        self.metrics.model_info.labels(model=self.choice.name, modalities=",".join(modalities)).set(1)
        log.info("model_loaded", model=self.choice.name, path=str(path), modalities=modalities,
                 load_seconds=self.load_seconds, batch_size=self.settings.batch_size)
        return True

    def _take_work(self) -> bool:
        """Start what is waiting: block while idle, else take only what is ready and fits. False once stopped."""
        while True:
            if self.queue.closed:
                for response in self._running.values():
                    response.job.cancelled = True
                return bool(self._running)
            if self._batch is not None and len(self._running) >= self._batch.capacity:
                return True
            job = self.queue.take(timeout=0 if self._running else None)
            if job is None:
                return bool(self._running)
            self._start(job)

    def _finish(self, job: Job, event: ServerEvent) -> None:
        job.finished = True
        self.queue.done(job)
        job.emit(event)

    def _start(self, job: Job) -> None:
        response = _Response(job, time.monotonic())
        try:
            if job.cancelled:
                self._finish(job, response.completed(job.cancel_reason))
                return
            if job.is_frame:
                self.metrics.frame_age.observe(response.started - job.received_at)
            if job.reset_history:
                self._conversations.pop(job.session_id, None)
            messages, images = self._prompt(response)
            response.image_tokens = self.model.image_tokens(images)  # type: ignore[union-attr]
            if job.dialogue is not None:
                response.conversation = self._conversations.setdefault(job.session_id, Conversation())
            instructions = job.prompt_instructions
            if self._batch is not None and self._batch.accepts(job.config, response.conversation):
                uid = self._batch.add(messages, instructions, images, job.max_tokens, job.config,
                                      response.conversation)
                job.emit(ResponseStarted(job.request_id, job.input_type, job.answer_id))
                self._running[uid] = response
            else:
                log.debug("serving_alone", session=job.session_id, request=job.request_id,
                          reason="a conversation" if response.conversation else "sampling differs from the batch's")
                self._generate_alone(response, messages, instructions, images)
        except ClientError as exc:
            self._finish(job, ErrorReport(exc.code, exc.message, job.request_id, job.input_type))
        except Exception as exc:
            log.exception("generation_failed", session=job.session_id, request=job.request_id)
            self._finish(job, ErrorReport(errors.INTERNAL, f"generation failed: {type(exc).__name__}",
                                          job.request_id, job.input_type))

    def _prompt(self, response: _Response) -> tuple[list[Message], list[Image.Image]]:
        """The messages to prompt with (a conversation's turn is committed now, and the conversation cut to
        its budget) and their images, decoded."""
        job = response.job
        decoded = {id(image): self._decode(image, job) for image in images_of(job.turn)}  # refused before kept
        if job.dialogue is None:
            messages = list(job.turn)
        else:
            messages, response.generation = job.dialogue.open_turn(job.turn)
        for image in images_of(messages):
            if id(image) not in decoded:
                decoded[id(image)] = self._decode(image, job)
        if job.dialogue is not None:
            assert self.model is not None
            instructions = job.prompt_instructions
            messages = within_budget(messages, lambda kept: self.model.count_tokens(  # type: ignore[union-attr]
                kept, instructions, [decoded[id(image)] for image in images_of(kept)]), self.settings.context_tokens)
        return messages, [decoded[id(image)] for image in images_of(messages)]

    def _decode(self, data: str | bytes, job: Job) -> Image.Image:
        """An image of the prompt, decoded once: a conversation's earlier images come back every turn."""
        assert self.model is not None
        if "image" not in self.model.modalities:
            raise errors.model_text_only(self.choice.name, job.request_id)
        image = self._decoded.pop(data, None)
        if image is None:
            settings = self.settings
            image = decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                                 max_side=settings.image_max_side)
        self._decoded[data] = image
        while len(self._decoded) > DECODED_IMAGES_KEPT:
            self._decoded.popitem(last=False)
        return image

    def _step(self) -> None:
        assert self._batch is not None
        for uid, response in list(self._running.items()):
            if response.job.cancelled:
                self._batch.remove(uid)
                del self._running[uid]
                self._complete(response, response.job.cancel_reason)
        if not self._running:
            return
        self.metrics.batch_size.observe(len(self._running))
        try:
            results = self._batch.step()
        except Exception as exc:
            log.exception("batch_step_failed", requests=len(self._running))
            for response in self._running.values():
                self._finish(response.job, ErrorReport(errors.INTERNAL, f"generation failed: {type(exc).__name__}",
                                                       response.job.request_id, response.job.input_type))
            self._running.clear()
            self._batch = self._new_batch()
            return
        now = time.monotonic()
        for uid, chunk in results:
            response = self._running[uid]
            response.add(chunk, now)
            if chunk.finish_reason is not None:
                del self._running[uid]
                self._complete(response, chunk.finish_reason)

    def _generate_alone(self, response: _Response, messages: list[Message], instructions: str | None,
                        images: list[Image.Image]) -> None:
        assert isinstance(self.model, VisionModel)
        job = response.job
        job.emit(ResponseStarted(job.request_id, job.input_type, job.answer_id))
        finish_reason = "length"
        chunks = self.model.generate(messages, instructions, images, job.max_tokens, job.config,
                                     response.conversation)
        try:
            for chunk in chunks:
                if job.cancelled:
                    finish_reason = job.cancel_reason
                    break
                response.add(chunk, time.monotonic())
                finish_reason = chunk.finish_reason or finish_reason
        finally:
            chunks.close()
        self._complete(response, finish_reason)

    def _complete(self, response: _Response, finish_reason: str) -> None:
        """End a response that started; a conversation keeps its answer, or what was generated of it."""
        event = response.completed(finish_reason)
        response.job.record_answer(event.full_text, finish_reason, response.generation)
        self._finish(response.job, event)
