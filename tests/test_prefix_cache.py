"""The shared prefix cache as a unit, on a real tiny model: what it hands out, what it keeps, what it drops."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler

from mlxd.engine.prefix_cache import PrefixCache, image_key, longest_shared_prefix


@pytest.fixture(scope="module")
def tiny(tiny_text_model):
    return mlx_lm.load(str(tiny_text_model))


def prefilled(model, ids: list[int]) -> list:
    cache = make_prompt_cache(model)
    model(mx.array([ids]), cache=cache)
    mx.eval([layer.state for layer in cache])
    return cache


def greedy(model, tokenizer, ids: list[int], cache=None, fed_from: int = 0) -> list[int]:
    steps = mlx_lm.stream_generate(model, tokenizer, ids[fed_from:], max_tokens=24, sampler=make_sampler(0.0),
                                   prompt_cache=cache)
    return [step.token for step in steps]


def test_a_shared_prefix_is_served_from_the_cache_and_answers_as_a_cold_run(tiny):
    model, tokenizer = tiny
    system = tokenizer.encode("You are a careful assistant who answers in short sentences. " * 3)
    first, second = system + tokenizer.encode(" Tell me a story"), system + tokenizer.encode(" Count to ten")
    cache = PrefixCache(max_bytes=1 << 30)
    cache.store(first, prefilled(model, first))
    copy, shared = cache.fetch(second)
    assert len(system) - 1 <= shared < len(second)
    assert greedy(model, tokenizer, second, copy, shared) == greedy(model, tokenizer, second)
    assert cache.stats() | {"bytes": 0} == {"hits": 1, "misses": 0, "tokens_saved": shared, "bytes": 0,
                                            "entries": 1}


def test_what_a_request_writes_into_its_copy_never_reaches_the_entry(tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode("The same opening for everyone, and then something else entirely")
    cache = PrefixCache(max_bytes=1 << 30)
    cache.store(ids, prefilled(model, ids))
    [entry] = cache._entries.values()
    before = [mx.array(layer.keys) for layer in entry.cache]
    reference = greedy(model, tokenizer, [*ids[:-3], 5, 6, 7])
    for _ in range(3):
        copy, shared = cache.fetch([*ids[:-3], 5, 6, 7])
        assert greedy(model, tokenizer, [*ids[:-3], 5, 6, 7], copy, shared) == reference
    assert all(mx.array_equal(old, layer.keys).item() for old, layer in zip(before, entry.cache, strict=True))
    assert entry.cache[0].offset == len(ids)


def test_nothing_is_shared_when_the_first_tokens_differ_and_one_token_is_always_left_to_feed(tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode("An opening line")
    cache = PrefixCache(max_bytes=1 << 30)
    cache.store(ids, prefilled(model, ids))
    assert cache.fetch([ids[0] + 1, *ids[1:]])[0] is None
    assert cache.fetch(ids)[1] == len(ids) - 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_eviction_keeps_held_bytes_and_entries_under_their_bounds_least_recently_used_first(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(f"Prompt number {i} says something of its own") for i in range(6)]
    cache = PrefixCache(max_bytes=1 << 30)
    cache.store(prompts[0], prefilled(model, prompts[0]))
    one = cache.nbytes
    bounded = PrefixCache(max_bytes=int(2.5 * one), max_entries=10)
    for ids in prompts[:3]:
        bounded.store(ids, prefilled(model, ids))
    assert len(bounded) == 2 and bounded.nbytes <= bounded.max_bytes
    assert bounded.fetch(prompts[0] + [9])[1] < len(prompts[0]), "the oldest entry went first"
    assert bounded.fetch(prompts[1] + [9])[1] == len(prompts[1])
    bounded.store(prompts[3], prefilled(model, prompts[3]))
    assert bounded.fetch(prompts[1] + [9])[1] == len(prompts[1]), "a hit makes an entry recent"
    counted = PrefixCache(max_bytes=1 << 30, max_entries=3)
    for ids in prompts:
        counted.store(ids, prefilled(model, ids))
    assert len(counted) == 3


def test_a_longer_entry_replaces_its_prefixes_and_a_prefix_of_an_entry_adds_nothing(tiny):
    model, tokenizer = tiny
    short = tokenizer.encode("A system prompt")
    long = short + tokenizer.encode(" and a question with its answer")
    cache = PrefixCache(max_bytes=1 << 30)
    cache.store(short, prefilled(model, short))
    cache.store(long, prefilled(model, long))
    assert len(cache) == 1
    cache.store(short, prefilled(model, short))
    assert len(cache) == 1 and cache.fetch([*short, 3])[1] == len(short)


def test_an_entry_held_past_its_bound_or_a_cache_switched_off_holds_nothing(tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode("Some prompt")
    for cache in (PrefixCache(max_bytes=16), PrefixCache(max_bytes=0)):
        cache.store(ids, prefilled(model, ids))
        assert len(cache) == 0 and cache.nbytes == 0 and cache.fetch(ids)[0] is None


def test_image_positions_are_keyed_by_their_pixels():
    ids = [1, 2, 9, 9, 3, 9, 9, 4]
    same = image_key(ids, 9, [b"a" * 32, b"b" * 32])
    assert same == image_key(ids, 9, [b"a" * 32, b"b" * 32])
    other = image_key(ids, 9, [b"a" * 32, b"c" * 32])
    assert same[:5] == other[:5] and same[5] != other[5]
    assert same[:2] == [1, 2] and all(value < 0 for value in same[2:4]) and same[2] == same[3]
    assert image_key(ids, 9, []) == ids and image_key([1, 2], 9, [b"x"]) == [1, 2]


def test_the_longest_prefix_two_prompts_share_and_what_the_cache_would_serve_without_counting(tiny):
    model, tokenizer = tiny
    assert longest_shared_prefix([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 8], [7]]) == [1, 2, 3]
    assert longest_shared_prefix([[1, 2], [3, 4]]) is None and longest_shared_prefix([[1, 2]]) is None
    assert longest_shared_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2], "one token of each is left to feed"
    ids = tokenizer.encode("A shared opening")
    cache = PrefixCache(max_bytes=1 << 30)
    cache.store(ids, prefilled(model, ids))
    assert cache.held([*ids, 4, 5]) == len(ids) and cache.held([ids[0] + 1]) == 0
    assert (cache.hits, cache.misses) == (0, 0)
