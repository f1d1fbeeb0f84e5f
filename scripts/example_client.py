"""An example mlxd client: ask a question, then stream frames as binary messages (no base64).

    python scripts/example_client.py [--url ws://127.0.0.1:8765] [--image photo.jpg] [--fps 5] [--seconds 3]

Frames are sent as one binary WebSocket message each: a 4-byte big-endian header length, a UTF-8 JSON header
(the fields of a `video_frame` message without `frame`), then the raw JPEG bytes. Without --image a synthetic
picture is sent. Answers stream back as `token` messages; frames the server had no time for come back as
`frame_dropped`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

import websockets
from PIL import Image, ImageDraw


def binary_frame(header: dict, jpeg: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "big") + encoded + jpeg


def synthetic_jpeg(index: int) -> bytes:
    image = Image.new("RGB", (320, 240), (30, 30, 60))
    ImageDraw.Draw(image).ellipse((40 + 8 * index, 60, 140 + 8 * index, 160), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


async def main(url: str, image: Path | None, fps: float, seconds: float) -> None:
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", "temperature": 0, "maxOutputTokens": 60, "max_tokens_image": 30}))
        await ws.recv()
        await ws.send(json.dumps({"type": "text_input", "content": "What is the capital of France?", "id": "q"}))
        frames = int(fps * seconds)
        for i in range(frames):
            jpeg = image.read_bytes() if image else synthetic_jpeg(i)
            await ws.send(binary_frame({"type": "video_frame", "id": f"f{i}", "prompt": "Describe the scene"}, jpeg))
            await asyncio.sleep(1 / fps)
        pending = {"q", *(f"f{i}" for i in range(frames))}
        while pending:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message["type"] == "token":
                print(message["content"], end="", flush=True)
            elif message["type"] in ("response_complete", "frame_dropped", "error"):
                pending.discard(message.get("id"))
                detail = message.get("finish_reason") or message.get("reason") or message.get("code")
                print(f"\n[{message['type']} {message.get('id')}: {detail}]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--image", type=Path, help="a JPEG to send as every frame")
    parser.add_argument("--fps", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.image, args.fps, args.seconds))
