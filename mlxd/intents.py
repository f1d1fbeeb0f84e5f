"""What a client asks of its session, independent of any wire format: every protocol's `parse` returns these.

Protocols differ in meaning, not only in spelling, and the difference is expressed here once: in the
original protocol every text, image and frame asks for an answer (`TextInput`, `ImageInput`); in the
conversation protocols messages build a conversation (`AddMessages`), frames are context (`OfferFrame`) and
an explicit `Respond` asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mlxd.dialogue import Message

FRAME_TYPES = ("video_frame", "screen_frame")
MAX_AUDIO_CHUNK_BYTES = 1024 * 1024  # decoded PCM in one AudioInput
MIN_AUDIO_RATE, MAX_AUDIO_RATE = 8000, 48000


def pcm_problem(pcm: bytes, sample_rate: int) -> tuple[str, str] | None:
    """What is wrong with a chunk of PCM16LE mono audio, as (the field at fault, why), or None: the limits every
    wire and the session apply."""
    if not MIN_AUDIO_RATE <= sample_rate <= MAX_AUDIO_RATE:
        return "sample_rate", (f"a sample rate of {sample_rate} Hz is not served (from {MIN_AUDIO_RATE} to "
                               f"{MAX_AUDIO_RATE} Hz)")
    if len(pcm) > MAX_AUDIO_CHUNK_BYTES:
        return "audio", (f"a chunk of {len(pcm)} bytes is over the limit: at most {MAX_AUDIO_CHUNK_BYTES} bytes; "
                         "send smaller chunks")
    if len(pcm) % 2:
        return "audio", f"PCM16 audio has an even number of bytes, this chunk has an odd {len(pcm)}"
    return None


@dataclass(frozen=True)
class TextInput:
    """A question that asks for its own answer; with `history` on, a turn of the session's conversation."""

    request_id: str | None
    content: str
    context: str | None


@dataclass(frozen=True)
class ImageInput:
    """An `image_input` (never dropped) or a frame (latest wins) that asks for its own answer; still encoded."""

    request_id: str | None
    message_type: str
    data: str | bytes
    prompt: str
    source: str | None

    @property
    def is_frame(self) -> bool:
        return self.message_type in FRAME_TYPES


@dataclass(frozen=True)
class ConfigUpdate:
    request_id: str | None
    changes: dict[str, Any]


@dataclass(frozen=True)
class Cancel:
    """End the named request, or (no id) whatever is running."""

    request_id: str | None


@dataclass(frozen=True)
class GetStatus:
    request_id: str | None


@dataclass(frozen=True)
class Reset:
    request_id: str | None


@dataclass(frozen=True)
class AddMessages:
    """Messages into the conversation: appended, or after the message `after` ("root": first). `pending`
    adds them to the turn being built instead, which the next `Respond` commits with its frame."""

    messages: tuple[Message, ...]
    after: str | None = None
    pending: bool = False
    request_id: str | None = None


WhenBusy = Literal["interrupt", "wait", "refuse"]


@dataclass(frozen=True)
class Respond:
    """Ask for an answer, prompted with the instructions, the conversation, the pending turn and the newest
    offered frame; it is recorded in the conversation as `answer_id`. Out of band, it sees only `input` (and
    the instructions and the frame) and records nothing; an `input` entry may also be the id of a message of
    the conversation. `when_busy` says what happens to a conversation answer still running: cut it (its text
    so far stays), wait for it, or refuse this one. A frame that it commits as a message of its own (nothing
    else is pending) gets the id `frame_id`."""

    request_id: str
    answer_id: str | None = None
    out_of_band: bool = False
    input: tuple[Message | str, ...] = ()
    instructions: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    when_busy: WhenBusy = "interrupt"
    frame_id: str | None = None


@dataclass(frozen=True)
class OfferFrame:
    """A live frame as context: only the newest waits for the next answer; it never asks by itself."""

    data: str | bytes


@dataclass(frozen=True)
class Interrupt:
    """Cut the running conversation answer (barge-in) and ask nothing."""


@dataclass(frozen=True)
class DeleteMessage:
    message_id: str
    request_id: str | None = None


@dataclass(frozen=True)
class RetrieveMessage:
    message_id: str
    request_id: str | None = None


@dataclass(frozen=True)
class SetInstructions:
    text: str | None


@dataclass(frozen=True)
class TurnDetection:
    """Server-side turn detection with OpenAI `server_vad` semantics: speech is a run of VAD windows above
    `threshold`; a turn keeps `prefix_padding_ms` of audio before its onset and ends after
    `silence_duration_ms` of silence."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    interrupt_response: bool = True
    create_response: bool = True


@dataclass(frozen=True)
class VoiceSettings:
    """How a session listens and talks; `turn_detection` None: the client marks turns itself (AudioMark)."""

    turn_detection: TurnDetection | None = TurnDetection()
    input_transcription: bool = False
    output_audio: bool = False
    voice: str | None = None
    standalone_turns: bool = False  # the original protocol: a spoken turn asks as a text_input does, not as a
    # turn of the conversation (with the pending turn and the newest frame, answered through Respond)


@dataclass(frozen=True)
class SetVoice:
    """The session's whole new voice state: the wire keeps its protocol's merged configuration."""

    settings: VoiceSettings
    request_id: str | None = None


@dataclass(frozen=True)
class AudioInput:
    """Microphone audio, PCM16LE mono; in the original protocol `request_id` is the chunk's id, and a turn that
    this chunk ends is answered with it."""

    pcm: bytes
    sample_rate: int
    request_id: str | None = None


@dataclass(frozen=True)
class AudioMark:
    """The client marks turns: `start` and `end` of speech, `commit` what is buffered as a turn, `clear` it."""

    kind: Literal["start", "end", "commit", "clear"]
    request_id: str | None = None
    respond: bool = True  # False: the turn is only added to the conversation (OpenAI's commit; a
    # response.create asks)


@dataclass(frozen=True)
class TruncateAnswer:
    """Keep only what the user heard of an answer: its text up to `audio_end_ms` of its audio."""

    message_id: str
    audio_end_ms: int
    request_id: str | None = None


Intent = (TextInput | ImageInput | ConfigUpdate | Cancel | GetStatus | Reset | AddMessages | Respond | OfferFrame
          | Interrupt | DeleteMessage | RetrieveMessage | SetInstructions | SetVoice | AudioInput | AudioMark
          | TruncateAnswer)
