"""`scripts/bench.py --only voice`: voice to voice in one process, on the embedded CPU stack.

SmolLM2-135M on an engine thread, Silero VAD + Whisper tiny.en + the system speech engine on the audio thread
(mlxd's AudioModels), a flite question streamed in real time in 20 ms chunks as a microphone would:
  - latency from the end of speech (the question's last loud sample) to the first sample of the spoken answer,
    split into VAD hangover (server_vad: 500 ms of silence ends the turn), STT, the LLM's time to its first
    sentence (and to its first token), and TTS of that sentence; once with STT after the turn ends, and once
    with STT started speculatively at the first silent window, during the hangover (a session could do that);
  - the real-time factor of each model (compute seconds per second of audio);
  - whether the audio thread and the engine thread overlap: SmolLM2 decode tokens/s and a transcription's time,
    each alone and both at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlxd.audio import AudioModels
from mlxd.audio.pcm import OUTPUT_RATE, SPEECH_RATE
from tests.tiny_audio import flite_speech

QUESTION = "What is the capital of France?"
CHUNK = 320  # 20 ms at 16 kHz, a typical microphone packet
THRESHOLD, SILENCE_MS, PREFIX_MS = 0.5, 500, 300  # OpenAI server_vad's defaults
LOUD = 0.02
SENTENCE_END = re.compile(r"[.!?](\s|$)")


class Engine:
    """SmolLM2 on its own thread, greedy, as mlxd's engine thread runs it."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.thread.submit(self._load).result()

    def _load(self) -> None:
        import mlx_lm

        from mlxd.engine.embedded import model_folder

        self.model, self.tokenizer = mlx_lm.load(str(model_folder()))

    def answer(self, question: str, max_tokens: int, first_sentence_only: bool = False) -> Future[Answer]:
        return self.thread.submit(self._answer, question, max_tokens, first_sentence_only)

    def _answer(self, question: str, max_tokens: int, first_sentence_only: bool) -> Answer:
        import mlx_lm
        from mlx_lm.sample_utils import make_sampler

        started = time.perf_counter()
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                    add_generation_prompt=True)
        answer = Answer()
        for response in mlx_lm.stream_generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens,
                                               sampler=make_sampler(temp=0.0)):
            now = time.perf_counter() - started
            answer.first_token = now if answer.first_token is None else answer.first_token
            answer.text += response.text
            answer.tokens = response.generation_tokens
            if answer.sentence is None and SENTENCE_END.search(answer.text):
                answer.sentence = now
                if first_sentence_only:
                    break
        answer.decode_seconds = time.perf_counter() - started - (answer.first_token or 0)
        return answer


@dataclass
class Answer:
    text: str = ""
    tokens: int = 0
    first_token: float | None = None  # seconds from the request
    sentence: float | None = None  # seconds to the end of the first sentence
    decode_seconds: float = 0.0  # after the first token

    @property
    def first_sentence(self) -> str:
        end = SENTENCE_END.search(self.text)
        return (self.text[:end.end()] if end else self.text).strip()


async def stream_question(audio: AudioModels, speech: np.ndarray, speculative: bool
                          ) -> tuple[float, asyncio.Future[str], float]:
    """Send `speech` in real time; return the wall time at which server_vad ends the turn, the transcription
    of the turn's audio (with its prefix padding) and the wall time of the question's last loud sample.

    Speculative: the transcription starts at the first silent window, while the 500 ms of silence that end
    the turn are still being heard; speech resuming would discard it (it does not, in this question).
    """
    vad = audio.vad_stream()
    offset = np.flatnonzero(np.abs(speech) > LOUD)[-1] / SPEECH_RATE
    started = time.perf_counter()
    windows, start, silent, early = 0, None, 0, None
    for i in range(0, speech.size, CHUNK):
        await asyncio.sleep(max(0.0, started + i / SPEECH_RATE - time.perf_counter()))
        for p in await vad.probabilities(speech[i:i + CHUNK]):
            windows += 1
            if p >= THRESHOLD:
                start = windows - 1 if start is None else start
                silent, early = 0, None
                continue
            if start is None:
                continue
            silent += 1
            turn = speech[max(0, start * vad.window - PREFIX_MS * SPEECH_RATE // 1000):(windows - silent) * vad.window]
            if speculative and early is None:
                early = asyncio.ensure_future(audio.transcribe(turn))
            if silent * vad.window * 1000 / SPEECH_RATE >= SILENCE_MS:
                return time.perf_counter(), early or asyncio.ensure_future(audio.transcribe(turn)), started + offset
    raise RuntimeError("the VAD never saw the question end")


def cascade(audio: AudioModels, engine: Engine, speech: np.ndarray, speculative: bool = False) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        ended, transcription, spoken_end = await stream_question(audio, speech, speculative)
        t = time.perf_counter()
        text = await transcription
        stt = time.perf_counter() - t  # after the end of the turn: all of it, or what speculation left
        assert text == QUESTION, text
        t = time.perf_counter()
        answer = await asyncio.wrap_future(engine.answer(text, 64, first_sentence_only=True))
        llm = time.perf_counter() - t
        sentence = answer.first_sentence
        t = time.perf_counter()
        spoken = await audio.speak(sentence)
        tts = time.perf_counter() - t
        assert spoken.size > 0
        return {"hangover": ended - spoken_end, "stt": stt, "llm_first_token": answer.first_token, "llm_sentence": llm,
                "tts": tts, "total": time.perf_counter() - spoken_end, "answer": sentence}
    return asyncio.run(run())


def real_time_factors(audio: AudioModels, speech: np.ndarray) -> dict[str, float]:
    async def run() -> dict[str, float]:
        seconds = speech.size / SPEECH_RATE
        vad = audio.vad_stream()
        t = time.perf_counter()
        await vad.probabilities(speech)
        vad_rtf = (time.perf_counter() - t) / seconds
        t = time.perf_counter()
        await audio.transcribe(speech)
        stt_rtf = (time.perf_counter() - t) / seconds
        stt = audio.slots["stt"].backend  # the baseline: mlx-audio's own decoder on the same float32 weights
        t = time.perf_counter()
        await audio.worker.submit(lambda: stt.model.generate(speech, temperature=0.0, verbose=None, fp16=False))
        generate_rtf = (time.perf_counter() - t) / seconds
        t = time.perf_counter()
        spoken = await audio.speak("The capital of France is Paris. It is a large city on the river Seine.")
        tts_rtf = (time.perf_counter() - t) / (spoken.size / OUTPUT_RATE)
        return {"vad": vad_rtf, "stt": stt_rtf, "stt (mlx-audio generate)": generate_rtf, "tts": tts_rtf}
    return asyncio.run(run())


def overlap(audio: AudioModels, engine: Engine, speech: np.ndarray, tokens: int) -> dict[str, float]:
    """Decode tok/s and STT seconds, each alone, then both at once on their own threads."""
    async def transcribe() -> float:
        t = time.perf_counter()
        await audio.transcribe(speech)
        return time.perf_counter() - t

    def decode_rate(answer: Answer) -> float:
        return (answer.tokens - 1) / answer.decode_seconds

    alone_rate = decode_rate(engine.answer("Tell me a story about a robot who learns to paint.", tokens).result())
    alone_stt = asyncio.run(transcribe())

    async def both() -> tuple[float, float]:
        decoding = engine.answer("Tell me a story about a robot who learns to paint.", tokens)
        await asyncio.sleep(0.2)  # decoding has started
        stt = await transcribe()
        return decode_rate(await asyncio.wrap_future(decoding)), stt
    together_rate, together_stt = asyncio.run(both())
    return {"decode_alone": alone_rate, "decode_together": together_rate, "stt_alone": alone_stt,
            "stt_together": together_stt}


def voice(runs: int, tokens: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        question = flite_speech(QUESTION, Path(scratch))
    silence = np.zeros(SPEECH_RATE // 2, dtype=np.float32)
    speech = np.concatenate([silence, question, silence, silence, silence])
    audio = AudioModels()
    audio.start()
    started = time.perf_counter()
    engine = Engine()
    while any(slot["state"] == "loading" for slot in audio.describe().values()):
        time.sleep(0.05)
    print(f"\n## voice (in process, load average {os.getloadavg()[0]:.1f}): models loaded in "
          f"{time.perf_counter() - started:.1f} s")
    for role, slot in audio.describe().items():
        print(f"  {role}: {slot['model']} ({slot['source']}; {slot['reason']}) {slot['state']}")
    cascade(audio, engine, speech)  # warm-up: first calls import and allocate
    for speculative in (False, True):
        results = [cascade(audio, engine, speech, speculative) for _ in range(runs)]
        how = ("speculative: STT starts at the first silent window, during the hangover" if speculative
               else "sequential: STT starts when the turn ends")
        print(f"  end of speech -> first audio sample, {how}; answer {results[0]['answer']!r}")
        for r in results:
            print("    " + ", ".join(f"{key} {r[key]:.3f}" for key in
                                     ("hangover", "stt", "llm_first_token", "llm_sentence", "tts", "total")) + " s")
        print(f"    median total {statistics.median(r['total'] for r in results):.3f} s; the issue measured 5.1 s "
              f"end to end on this CPU")
    factors = real_time_factors(audio, speech)
    print("  real-time factors (compute s per audio s): " + ", ".join(f"{k} {v:.3f}" for k, v in factors.items()))
    both = overlap(audio, engine, speech, tokens)
    print(f"  overlap: decode {both['decode_alone']:.1f} tok/s alone, {both['decode_together']:.1f} tok/s while "
          f"transcribing; STT {both['stt_alone']:.2f} s alone, {both['stt_together']:.2f} s while decoding")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    audio.close()
