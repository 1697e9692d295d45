"""Shared test setup. Environment first: textgrad reads TEXTGRAD_LOG_DIR and litellm reads
LITELLM_LOCAL_MODEL_COST_MAP when first imported, so they must be set before any test module imports them."""

import atexit
import os
import shutil
import sys
import tempfile

_TMP = tempfile.mkdtemp(prefix="nslora-tests-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TEXTGRAD_LOG_DIR", os.path.join(_TMP, "textgrad-logs"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_TMP, "cache"))

# The project root, so `pytest` works as well as `python -m pytest`.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

from fake_openai import FakeOpenAI  # noqa: E402


@pytest.fixture
def fake_openai():
    """A running fake OpenAI-compatible server; `.base_url`, `.requests`, `.reply`, `.fault`, `.latency`."""
    with FakeOpenAI() as srv:
        yield srv
