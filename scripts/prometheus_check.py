"""Prove the metrics with a real Prometheus: scrape mlxd on loopback, then ask Prometheus's HTTP API.

Needs the `prometheus` binary (Debian: `apt-get install prometheus`). Starts mlxd on a tiny model (or
--model), sends a few questions, lets Prometheus scrape every second, then queries
`mlxd_generated_tokens_total` and compares it with the tokens the client received.

    python scripts/prometheus_check.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import ServerProcess, free_port
from tests.tiny_models import build_text_model


def ask(url: str, questions: int) -> int:
    generated = 0
    with connect(url) as ws:
        ws.send(json.dumps({"type": "config", "maxOutputTokens": 50}))
        ws.recv(timeout=30)
        for i in range(questions):
            ws.send(json.dumps({"type": "text_input", "content": f"question {i}", "id": str(i)}))
            while (message := json.loads(ws.recv(timeout=60)))["type"] != "response_complete":
                pass
            generated += message["usage"]["completion_tokens"]
    return generated


def query(prometheus: str, expression: str, deadline: float) -> list:
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5).json()
            if body["status"] == "success" and body["data"]["result"]:
                return body["data"]["result"]
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Prometheus returned nothing for {expression}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model to serve (default: a tiny random-weight llama)")
    parser.add_argument("--questions", type=int, default=3)
    args = parser.parse_args()
    binary = shutil.which("prometheus")
    if binary is None:
        print("prometheus is not installed (Debian: apt-get install prometheus)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        model = args.model or str(build_text_model(scratch_path / "tiny-llama"))
        server = ServerProcess(model, log_path=scratch_path / "mlxd.log")
        prometheus_port = free_port()
        config = scratch_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: mlxd\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{server.port}']\n")
        prometheus = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={scratch_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=(scratch_path / "prometheus.log").open("wb"))
        try:
            server.wait_state("ready", timeout=600)
            generated = ask(server.ws_url(), args.questions)
            time.sleep(2.5)
            api = f"http://127.0.0.1:{prometheus_port}"
            deadline = time.monotonic() + 30
            result = query(api, "mlxd_generated_tokens_total", deadline)
            print(f"client received {generated} tokens in {args.questions} answers")
            print(f"GET {api}/api/v1/query?query=mlxd_generated_tokens_total ->")
            print(json.dumps(result, indent=2))
            scraped = float(result[0]["value"][1])
            up = query(api, 'up{job="mlxd"}', deadline)[0]["value"][1]
            print(f"up{{job=\"mlxd\"}} = {up}; Prometheus saw {scraped:g} generated tokens")
            return 0 if scraped == generated else 1
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=10)
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
