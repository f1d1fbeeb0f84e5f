"""The vision model reuses what it saw: the same pixels skip the vision tower, and answer as before."""

from __future__ import annotations

import base64

import pytest

from tests import helpers
from tests.helpers import encoded_image, receive, run_concurrently, run_request, scrape, send, value


def frame(color: tuple[int, int, int]) -> str:
    return "data:image/png;base64," + base64.b64encode(encoded_image(640, 480, "PNG", color)).decode()


def answer(server, image: str, prompt: str = "What is on the screen?", kind: str = "image_input",
           ready=None) -> dict:
    field = "image" if kind == "image_input" else "frame"
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "max_tokens_image": 24})
        receive(ws)
        if ready is not None:
            ready.wait(timeout=30)
        done = run_request(ws, {"type": kind, field: image, "prompt": prompt, "id": "i"})[-1]
    assert done["type"] == "response_complete", done
    return done


def test_the_same_image_again_reuses_its_features_and_answers_as_the_cold_run(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model)
    red, blue = frame((200, 40, 40)), frame((40, 40, 200))
    cold_red, cold_blue = answer(server, red), answer(server, blue)
    before = scrape(server)
    assert answer(server, red)["full_text"] == cold_red["full_text"]
    assert answer(server, red, kind="video_frame")["full_text"] == answer(server, red)["full_text"]
    after = scrape(server)
    assert value(after, "mlxd_vision_cache_hits_total") >= value(before, "mlxd_vision_cache_hits_total") + 2
    assert value(after, "mlxd_vision_cache_misses_total") == value(before, "mlxd_vision_cache_misses_total")
    assert answer(server, red, "Describe it in other words.")["type"] == "response_complete"
    assert value(scrape(server), "mlxd_vision_cache_hits_total") > value(after, "mlxd_vision_cache_hits_total"), \
        "a new prompt on a known image still skips the vision tower"
    green = answer(server, frame((40, 200, 40)))
    assert value(scrape(server), "mlxd_vision_cache_misses_total") > value(after, "mlxd_vision_cache_misses_total")
    assert cold_blue["full_text"] == answer(server, blue)["full_text"] and green["type"] == "response_complete"


def test_a_cache_switched_off_answers_the_same(start_server, tiny_vision_model):
    cached, uncached = start_server(tiny_vision_model), start_server(tiny_vision_model, "--vision-cache-size", "0")
    red = frame((200, 40, 40))
    for _ in range(2):
        assert answer(cached, red)["full_text"] == answer(uncached, red)["full_text"]
    assert value(scrape(uncached), "mlxd_vision_cache_hits_total") == 0
    assert value(scrape(cached), "mlxd_vision_cache_hits_total") >= 1


def test_sessions_sending_the_same_frame_at_once_share_its_features_and_answer_alike(start_server,
                                                                                     tiny_vision_model):
    server = start_server(tiny_vision_model)
    red = frame((200, 40, 40))
    cold = answer(server, red, kind="video_frame")["full_text"]
    together = run_concurrently(lambda i, ready: answer(server, red, kind="video_frame", ready=ready), 4)
    assert [done["full_text"] for done in together] == [cold] * 4
    assert value(scrape(server), "mlxd_vision_cache_hits_total") >= 4


IMAGE_TOKENS = 4  # the tiny Gemma 3's tokens per image (tests/tiny_models.py)


# The short prompt's KV can be cut back anywhere; the long one fills the tiny Gemma 3's 64-token sliding window,
# so its entry serves only prompts that extend it whole, and the prefix before its image is kept apart.
@pytest.mark.parametrize("prompt", ["What is on the screen?", "Describe every part of the screen in detail. " * 8],
                         ids=["short", "fills the sliding window"])
def test_the_same_image_reuses_its_kv_and_a_new_one_reuses_the_prompt_before_it(start_server, tiny_vision_model,
                                                                                 prompt):
    server = start_server(tiny_vision_model)
    cold = start_server(tiny_vision_model, "--prefix-cache-bytes", "0", "--vision-cache-size", "0")
    red, blue = frame((200, 40, 40)), frame((40, 40, 200))
    first = answer(server, red, prompt)
    assert first["usage"]["cached_tokens"] == 0
    again = answer(server, red, prompt, kind="video_frame")
    prompt_tokens = again["usage"]["prompt_tokens"]
    assert (prompt_tokens >= 64) == (prompt != "What is on the screen?")
    assert again["usage"]["cached_tokens"] == prompt_tokens - 1, "the same prompt and pixels prefill one token"
    other = answer(server, blue, prompt)
    assert 0 < other["usage"]["cached_tokens"] <= prompt_tokens - IMAGE_TOKENS - 1, \
        "a new image reuses only what comes before it"
    assert [first["full_text"], again["full_text"], other["full_text"]] == \
        [answer(cold, red, prompt)["full_text"], answer(cold, red, prompt, kind="video_frame")["full_text"],
         answer(cold, blue, prompt)["full_text"]]
    metrics = scrape(server)
    assert value(metrics, "mlxd_prefix_cache_hits_total") >= 2
    assert value(metrics, "mlxd_prefix_cache_tokens_saved_total") >= prompt_tokens
    assert value(scrape(cold), "mlxd_prefix_cache_hits_total") == 0


def test_frames_sent_together_reuse_each_others_prefixes_and_answer_as_cold_runs(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model)
    cold = start_server(tiny_vision_model, "--prefix-cache-bytes", "0", "--vision-cache-size", "0")
    frames = [frame((200, 40, 40)), frame((40, 40, 200)), frame((200, 40, 40)), frame((40, 200, 40))]
    expected = [answer(cold, image, kind="video_frame")["full_text"] for image in frames]
    together = run_concurrently(lambda i, ready: answer(server, frames[i], kind="video_frame", ready=ready), 4)
    assert [done["full_text"] for done in together] == expected
    assert sum(done["usage"]["cached_tokens"] > 0 for done in together) >= 3, "all but the first reuse a prefix"


def test_a_cancel_or_disconnect_during_a_prefill_from_a_cached_image_leaves_the_entry_intact(start_server,
                                                                                          tiny_vision_model):
    server = start_server(tiny_vision_model)
    red = frame((200, 40, 40))
    first = answer(server, red)
    long_prompt = "Look at every corner of this screen and say what you see there. " * 40
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "max_tokens_image": 24})
        receive(ws)
        done = helpers.cancel_once_started(ws, {"type": "image_input", "image": red, "prompt": long_prompt,
                                                "id": "long"})
    assert done["finish_reason"] == "cancelled"
    with server.connect() as ws:  # the same sampling, so that it shares the batch with what follows
        send(ws, {"type": "config", "temperature": 0, "max_tokens_image": 24})
        receive(ws)
        send(ws, {"type": "image_input", "image": red, "prompt": long_prompt, "id": "gone"})
    again = answer(server, red)
    assert again["usage"]["cached_tokens"] == again["usage"]["prompt_tokens"] - 1
    assert again["full_text"] == first["full_text"]
