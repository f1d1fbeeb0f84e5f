"""OpenAI's Realtime API (GA), spoken on /v1/realtime: the openai SDKs' realtime clients work unchanged.

Text, images and speech, over the same sessions and engine as the original protocol: `fields` (refusals),
`items` (conversation items), `config` (session and response parameters), `audio` (the voice configuration
and audio events), `responses` (a response's events) and `wire` (the per-connection Wire).
"""

from mlxd.protocols.openai_realtime.wire import RealtimeWire

__all__ = ["RealtimeWire"]
