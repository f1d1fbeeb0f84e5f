"""The engine: one thread that owns the model and makes every MLX call.

MLX streams are thread-local, so the thread that loads the model must run every generation. The engine
takes work from the WorkQueue, decodes the image of the work it chose (a dropped frame is never decoded),
generates, and hands events back through each job's `emit`, which never blocks: a slow client only slows
itself. Cancellation is checked between tokens, so a cancel or a disconnect takes effect within one step.
"""

from __future__ import annotations

import threading
import time

import structlog

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.events import ErrorReport, ResponseCompleted, ResponseStarted, ServerEvent, TokenText
from mlxd.media import decode_image
from mlxd.metrics import Metrics
from mlxd.model_choice import ModelChoice, resolve
from mlxd.models import LoadedModel, load_model, local_path
from mlxd.scheduler import Job, WorkQueue
from mlxd.settings import Settings

log = structlog.get_logger("mlxd.engine")

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


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
        self._current: Job | None = None

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

    def stop(self, timeout: float = 5.0) -> list[Job]:
        """Stop taking work, cancel the running job, and return the jobs that never started."""
        waiting = self.queue.close()
        current = self._current
        if current is not None:
            current.cancelled = True
        self._thread.join(timeout)
        if self.state != FAILED:
            self.state = STOPPED
        return waiting

    def _run(self) -> None:
        if self._load():
            while (job := self.queue.take()) is not None:
                self._serve(job)
        else:
            while (job := self.queue.take()) is not None:
                self._finish(job, ErrorReport(errors.MODEL_UNAVAILABLE, f"the model failed to load: {self.error}",
                                              job.request_id, job.input_type))

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
        self.load_seconds = round(time.perf_counter() - started, 3)
        self.state = READY
        self.metrics.model_loaded.set(1)
        self.metrics.model_load_seconds.set(self.load_seconds)
        self.metrics.model_info.labels(model=self.choice.name, modalities=",".join(self.model.modalities)).set(1)
        log.info("model_loaded", model=self.choice.name, path=str(path), modalities=list(self.model.modalities),
                 load_seconds=self.load_seconds)
        return True

    def _finish(self, job: Job, event: ServerEvent) -> None:
        job.finished = True
        job.emit(event)

    def _serve(self, job: Job) -> None:
        self._current = job
        try:
            self._finish(job, self._generate(job))
        except ClientError as exc:
            self._finish(job, ErrorReport(exc.code, exc.message, job.request_id, job.input_type))
        except Exception as exc:
            log.exception("generation_failed", session=job.session_id, request=job.request_id)
            self._finish(job, ErrorReport(errors.INTERNAL, f"generation failed: {type(exc).__name__}",
                                          job.request_id, job.input_type))
        finally:
            self._current = None

    def _generate(self, job: Job) -> ResponseCompleted:
        assert self.model is not None
        started = time.monotonic()
        if job.cancelled:
            return ResponseCompleted(job.request_id, job.input_type, "", "cancelled", 0, 0, 0.0, None)
        images = []
        if job.image_data is not None:
            if "image" not in self.model.modalities:
                raise ClientError(errors.MODEL_TEXT_ONLY, f"the model {self.choice.name} is text-only: "
                                  "it cannot take images or frames", job.request_id)
            settings = self.settings
            images.append(decode_image(job.image_data, max_bytes=settings.max_image_bytes,
                                       max_pixels=settings.max_image_pixels, max_side=settings.image_max_side))
            job.image_data = None
        if job.is_frame:
            self.metrics.frame_age.observe(started - job.received_at)
        job.emit(ResponseStarted(job.request_id, job.input_type))
        parts: list[str] = []
        first_token_at: float | None = None
        finish_reason, prompt_tokens, completion_tokens = "length", 0, 0
        chunks = self.model.generate(job.prompt, job.context, images, job.max_tokens, job.config)
        try:
            for chunk in chunks:
                if job.cancelled:
                    finish_reason = "cancelled"
                    break
                if first_token_at is None:
                    first_token_at = time.monotonic()
                if chunk.text:
                    parts.append(chunk.text)
                    job.emit(TokenText(job.request_id, chunk.text))
                prompt_tokens, completion_tokens = chunk.prompt_tokens, chunk.completion_tokens
                if chunk.finish_reason is not None:
                    finish_reason = chunk.finish_reason
        finally:
            chunks.close()
        ended = time.monotonic()
        return ResponseCompleted(
            request_id=job.request_id,
            input_type=job.input_type,
            full_text="".join(parts),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            inference_time=ended - started,
            time_to_first_token=None if first_token_at is None else first_token_at - started,
        )
