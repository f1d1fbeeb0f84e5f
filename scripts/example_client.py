"""An example mlxd client: ask a question, then stream frames as binary messages (no base64).

    python scripts/example_client.py [--url ws://127.0.0.1:8765] [--image photo.jpg] [--fps 5] [--seconds 3]

It uses mlxd.client, which sends each frame as one binary WebSocket message: a 4-byte big-endian header
length, a UTF-8 JSON header (the fields of a `video_frame` message without `frame`), then the raw JPEG
bytes. Without --image a synthetic picture is sent. Answers stream back token by token; frames the server
had no time for come back dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.client import Client, Response


def synthetic_jpeg(index: int) -> bytes:
    image = Image.new("RGB", (320, 240), (30, 30, 60))
    ImageDraw.Draw(image).ellipse((40 + 8 * index, 60, 140 + 8 * index, 160), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


async def main(url: str, image: Path | None, fps: float, seconds: float) -> None:
    async with Client(url) as client:
        await client.configure(temperature=0, maxOutputTokens=60, max_tokens_image=30)
        reply = client.ask("What is the capital of France?")
        async for piece in reply:
            print(piece, end="", flush=True)
        print(f"\n[{reply.id}: {(await reply).finish_reason}]")
        frames: list[Response] = []
        for i in range(int(fps * seconds)):
            jpeg = image.read_bytes() if image else synthetic_jpeg(i)
            frames.append(client.send_frame(jpeg, prompt="Describe the scene"))
            await asyncio.sleep(1 / fps)
        for frame in frames:
            result = await asyncio.wait_for(frame, 120)
            print(f"[{result.id}: dropped, {result.dropped}]" if result.dropped else f"[{result.id}] {result.text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--image", type=Path, help="a JPEG to send as every frame")
    parser.add_argument("--fps", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.image, args.fps, args.seconds))
