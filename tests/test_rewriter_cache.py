"""The persistent reply cache: identical requests make zero HTTP calls, in this process or the next."""

import os
import threading

import pytest

from fake_openai import PREFIX
from rewriter.cache import CachedEngine, request_key
from rewriter.engines import EngineError, OpenAIEngine, reset_breakers
from rewriter.strategies import STRATEGIES, RewriteContext
from nslora.tasks.base import Sample

KEY_ENV = "NSLORA_TEST_CACHE_KEY"
KEY = "sk-test-CACHE-DO-NOT-LEAK-1122334455"
BABI_Q = "Mary moved to the bathroom.\nJohn went to the hallway.\nWhere is Mary?"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    reset_breakers()


def engine(srv, model="fake", **kw):
    kw.setdefault("max_retries", 0)
    return OpenAIEngine(base_url=srv.base_url, model=model, api_key_env=KEY_ENV, timeout=5, **kw)


def test_second_identical_request_makes_no_http_call(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "cache.sqlite")
    first = cached.generate("hello", system="Be brief.")
    assert cached.generate("hello", system="Be brief.") == first
    assert len(fake_openai.chat_requests()) == 1
    assert (cached.hits, cached.misses) == (1, 1) and cached.calls == 1
    # Anything that changes the request misses: the messages, the sampling parameters.
    cached.generate("hello", system="Be briefer.")
    cached.generate("hello", system="Be brief.", temperature=0.7)
    cached.generate("hello", system="Be brief.", max_tokens=17)
    assert len(fake_openai.chat_requests()) == 4
    # A new process (a new engine on the same file) hits.
    again = CachedEngine(engine(fake_openai), tmp_path / "cache.sqlite")
    assert again.generate("hello", system="Be brief.") == first
    assert len(fake_openai.chat_requests()) == 4 and again.hits == 1 and again.stats()["cache_entries"] == 4


def test_key_covers_model_and_endpoint_not_credentials(fake_openai, monkeypatch):
    a = engine(fake_openai)
    assert request_key(a, "hi") != request_key(engine(fake_openai, model="other"), "hi")
    monkeypatch.setenv(KEY_ENV, "sk-another-key")
    b = engine(fake_openai)
    assert request_key(a, "hi") == request_key(b, "hi")  # the key is not part of the identity
    url = fake_openai.base_url.replace("http://", "http://user:pw@") + "?token=abc"
    c = OpenAIEngine(base_url=url, model="fake", api_key_env=KEY_ENV)
    assert request_key(a, "hi") == request_key(c, "hi")
    assert request_key(a, "hi", expect="<TAG>") == request_key(a, "hi")  # control keywords are not sent
    assert request_key(a, "hi", system="s") == request_key(a, [{"role": "system", "content": "s"},
                                                               {"role": "user", "content": "hi"}])


def test_failures_are_not_cached(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "c.sqlite")
    fake_openai.script = [500]
    with pytest.raises(EngineError):
        cached.generate("hello")
    assert len(cached.cache) == 0
    cached.generate("hello")
    assert len(cached.cache) == 1 and len(fake_openai.chat_requests()) == 2


def test_concurrent_identical_requests_are_made_once(fake_openai, tmp_path):
    fake_openai.latency = 0.2
    cached = CachedEngine(engine(fake_openai), tmp_path / "c.sqlite")
    out = []
    threads = [threading.Thread(target=lambda: out.append(cached.generate("same"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 1 and len(out) == 6
    assert len(fake_openai.chat_requests()) == 1 and cached.hits == 5 and cached.misses == 1


def test_textgrad_rerun_through_the_cache_makes_zero_calls(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "c.sqlite")
    s = Sample("s", "Answer.", BABI_Q, "bathroom", "bathroom")
    ctx = RewriteContext(cached, "Answer.", BABI_Q, "bathroom", "hallway")
    first = STRATEGIES["textgrad"]().rewrite(s, ctx)
    assert first.verdict == "accepted" and first.calls == 4 and first.cache_hits == 0
    n = len(fake_openai.chat_requests())
    second = STRATEGIES["textgrad"]().rewrite(s, ctx)
    assert len(fake_openai.chat_requests()) == n
    assert second.new_question == first.new_question == PREFIX + BABI_Q
    assert second.calls == 0 and second.tokens == 0 and second.cache_hits == 4
    # textgrad's own disk cache was never touched, and the key is in no file we wrote.
    cache_home = os.environ.get("XDG_CACHE_HOME", "")
    assert not os.path.exists(os.path.join(cache_home, "textgrad"))
    for folder in (tmp_path, os.environ.get("TEXTGRAD_LOG_DIR", "")):
        for root, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    assert KEY.encode() not in f.read(), name
