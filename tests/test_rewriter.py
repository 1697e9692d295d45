"""The rewriter: guard case table, strategies over real HTTP to a fake server, engines, probe, no key leaks."""

import socket
import threading

import pytest

from fake_openai import CRITIQUE, PREFIX
from rewriter import guard
from rewriter.engines import LocalEngine, OpenAIEngine, as_textgrad, build_engine, probe
from rewriter.strategies import STRATEGIES, RewriteContext, optimize_system_prompt
from rewriter.strategies.direct import clean
from router.config import RewriterConfig
from nslora.core.errors import UserError
from nslora.tasks.base import Sample

KEY_ENV = "NSLORA_TEST_REWRITER_KEY"
KEY = "sk-test-DO-NOT-LEAK-1234567890"

BABI_Q = (
    "Mary moved to the bathroom. John went to the hallway. Daniel went back to the hallway. "
    "Sandra moved to the garden. John moved to the office. Sandra journeyed to the bathroom. Where is Mary?"
)
GSM_Q = "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"
SYSTEM = "Answer with one word."


def sample(question=BABI_Q, answer="bathroom"):
    return Sample(id="s1", system=SYSTEM, question=question, answer=answer, target=answer)


def context(engine, question=BABI_Q, gold="bathroom", optimize_system=False):
    return RewriteContext(
        engine=engine, system=SYSTEM, question=question, gold=gold, student_answer="hallway",
        optimize_system=optimize_system,
    )


@pytest.fixture
def engine(fake_openai, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return OpenAIEngine(base_url=fake_openai.base_url, model="fake", api_key_env=KEY_ENV, max_retries=0, timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- guard -------------------------------------------------------------------------------------------------

GUARD_CASES = [
    # (original, new, gold, accepted, reason contains)
    (GSM_Q, "Tom has 3 apples and then buys 4 more apples. How many apples does Tom have in total now?", "7", True, "ok"),
    (GSM_Q, "Tom has apples and buys 4 more. How many apples does Tom have now?", "7", False, "number"),
    (GSM_Q, "Tom has 3 apples and buys 4 more, 7 in all. How many apples does Tom have now?", "7", False, "gold"),
    (BABI_Q, BABI_Q.replace("Mary", "Lucy"), "bathroom", False, "Mary"),
    (BABI_Q, BABI_Q.replace("Where is Mary?", "Where is Sandra?"), "bathroom", False, "asks about Sandra"),
    (BABI_Q, BABI_Q.replace("Where is Mary?", "In which room is Mary now?"), "bathroom", True, "ok"),
    (BABI_Q, BABI_Q.replace("John", "Jack"), "bathroom", False, "John"),
    (BABI_Q, "Read carefully. " + BABI_Q, "bathroom", True, "ok"),
    ("Where is the milk? Mary went to the garden.", "Mary went to the garden. Where is the milk? Look in the kitchen.",
     "kitchen", False, "gold"),
    (GSM_Q, GSM_Q, "7", False, "unchanged"),
    (GSM_Q, "  " + GSM_Q.replace(" ", "  "), "7", False, "unchanged"),
    (GSM_Q, "", "7", False, "empty"),
    (GSM_Q, "   \n", "7", False, "empty"),
    (GSM_Q, GSM_Q + " Think step by step." * 20, "7", False, "too long"),
    ("It costs 1,000 dollars. How much for 2?", "It costs 1000 dollars. How much would 2 cost?", "2000", True, "ok"),
    ("Janet's ducks lay 16 eggs. How many eggs does Janet have?", "How many eggs does Janet have if her ducks lay 16?",
     "16", True, "ok"),
]


@pytest.mark.parametrize("original,new,gold,accepted,why", GUARD_CASES)
def test_guard_cases(original, new, gold, accepted, why):
    ok, reason = guard.check(original, new, gold)
    assert ok is accepted, reason
    assert why.lower() in reason.lower()


def test_guard_system_prompt_basic_checks():
    assert guard.check_system(SYSTEM, "Read the story, then answer with one word.") == (True, "ok")
    assert not guard.check_system(SYSTEM, " ")[0]
    assert "too long" in guard.check_system(SYSTEM, "x" * 1000)[1]


# --- textgrad strategy ---------------------------------------------------------------------------------------


def test_textgrad_rewrites_question_over_http(fake_openai, engine):
    result = STRATEGIES["textgrad"]().rewrite(sample(), context(engine))
    assert result.verdict == "accepted", result.reason
    assert result.new_question == PREFIX + BABI_Q
    assert result.new_system is None
    chats = fake_openai.chat_requests()
    assert result.calls == len(chats) == 4  # loss, gradient to the answer, gradient to the question, update
    assert result.tokens > 0
    assert all(body["model"] == "fake" for body in chats)
    # The optimiser saw the whole story, not textgrad's 10 words (...) 10 words.
    assert BABI_Q in str(chats[-1]["messages"])
    assert KEY not in result.reason and KEY not in engine.name and KEY not in repr(engine)


def test_textgrad_with_system_prompt(fake_openai, engine):
    result = STRATEGIES["textgrad"]().rewrite(sample(), context(engine, optimize_system=True))
    assert result.verdict == "accepted", result.reason
    assert result.new_question == PREFIX + BABI_Q
    assert result.new_system == PREFIX + SYSTEM
    assert result.calls == len(fake_openai.chat_requests()) == 6


def test_textgrad_reply_without_tags_is_an_error(fake_openai, engine):
    fake_openai.reply = lambda messages: "I think the question is fine as it is."
    result = STRATEGIES["textgrad"]().rewrite(sample(), context(engine))
    assert result.verdict == "error"
    assert result.new_question is None
    # The engine sees that textgrad's update asked for the tags and treats a reply without them as malformed.
    assert "malformed reply: no <IMPROVED_VARIABLE>" in result.reason and "\n" not in result.reason
    assert result.calls == 4


def test_textgrad_http_fault_is_an_error_without_the_key(fake_openai, engine):
    fake_openai.fault = 500
    result = STRATEGIES["textgrad"]().rewrite(sample(), context(engine))
    assert result.verdict == "error"
    assert "HTTP 500" in result.reason
    assert KEY not in result.reason


def test_textgrad_leaking_update_is_rejected(fake_openai, engine):
    fake_openai.reply = lambda m: ("<IMPROVED_VARIABLE>Tom has 3 apples and buys 4 more, so 7. How many apples does "
                                   "Tom have now?</IMPROVED_VARIABLE>") if "<IMPROVED_VARIABLE>" in str(m) else CRITIQUE
    result = STRATEGIES["textgrad"]().rewrite(sample(GSM_Q, "7"), context(engine, question=GSM_Q, gold="7"))
    assert result.verdict == "rejected" and result.new_question is None
    assert "gold" in result.reason


def test_optimize_system_prompt_over_a_minibatch(fake_openai, engine):
    examples = [(BABI_Q, "hallway", "bathroom"), (GSM_Q, "12", "7")]
    result = optimize_system_prompt(SYSTEM, examples, engine)
    assert result.verdict == "accepted", result.reason
    assert result.new_question is None and result.new_system == PREFIX + SYSTEM
    assert result.calls == len(fake_openai.chat_requests()) == 3 * len(examples) + 1


# --- direct strategy -----------------------------------------------------------------------------------------


def test_direct_happy_path(fake_openai, engine):
    result = STRATEGIES["direct"]().rewrite(sample(GSM_Q, "7"), context(engine, question=GSM_Q, gold="7"))
    assert result.verdict == "accepted", result.reason
    assert result.new_question == PREFIX + GSM_Q
    assert result.calls == len(fake_openai.chat_requests()) == 1
    sent = str(fake_openai.requests[0]["messages"])
    assert "hallway" in sent  # the student's wrong answer is given as context


def test_direct_leaking_reply_is_rejected(fake_openai, engine):
    fake_openai.reply = lambda m: (
        "Rewritten question: Tom has 3 apples and buys 4 more, which makes 7. How many apples does Tom have now?"
    )
    result = STRATEGIES["direct"]().rewrite(sample(GSM_Q, "7"), context(engine, question=GSM_Q, gold="7"))
    assert result.verdict == "rejected" and result.new_question is None
    assert "gold" in result.reason


def test_direct_empty_reply_is_an_error(fake_openai, engine):
    fake_openai.reply = lambda m: "  "
    assert STRATEGIES["direct"]().rewrite(sample(), context(engine)).verdict == "error"


@pytest.mark.parametrize("reply,expected", [
    ("Where is Mary?", "Where is Mary?"),
    ('"Where is Mary?"', "Where is Mary?"),
    ("Rewritten question: Where is Mary?", "Where is Mary?"),
    ("**Question:** Where is Mary?", "Where is Mary?"),
    ("```\nWhere is Mary?\n```", "Where is Mary?"),
    ("```text\nRewritten question: \u201cWhere is Mary?\u201d\n```", "Where is Mary?"),
    ("<QUESTION>Where is Mary?</QUESTION>", "Where is Mary?"),
])
def test_direct_clean(reply, expected):
    assert clean(reply) == expected


def test_calls_are_counted_per_thread(fake_openai, engine):
    fake_openai.latency = 0.05
    results = [None, None, None]

    def work(i):
        results[i] = STRATEGIES["direct"]().rewrite(sample(GSM_Q, "7"), context(engine, question=GSM_Q, gold="7"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.calls for r in results] == [1, 1, 1]
    assert engine.calls == 3


# --- engines and probe ----------------------------------------------------------------------------------------


def test_probe_unreachable_names_url_not_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    port = _free_port()
    eng = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=KEY_ENV, max_retries=0, timeout=2)
    with pytest.raises(UserError) as info:
        probe(eng, timeout=2)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "unreachable" in message and "rewriter.base_url" in message
    assert KEY not in message and "\n" not in message


def test_probe_reachable_and_failing_servers(engine, fake_openai):
    probe(engine)
    fake_openai.fault = 401
    with pytest.raises(UserError, match="refused the API key") as info:
        probe(engine)
    assert KEY not in str(info.value)
    fake_openai.fault = 404  # answers, but not as an OpenAI-compatible server: a wrong path or model
    with pytest.raises(UserError, match="refused a chat request.*rewriter.model=fake"):
        probe(engine)


def test_engine_name_hides_credentials(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    eng = OpenAIEngine(base_url="http://user:pw@127.0.0.1:9/v1?token=abc", model="m", api_key_env=KEY_ENV)
    assert eng.name == "openai:m@127.0.0.1:9"
    assert KEY not in eng.name and KEY not in repr(eng)


def test_openai_without_base_url_needs_the_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UserError, match=KEY_ENV):
        build_engine(RewriterConfig(engine="openai", api_key_env=KEY_ENV))


def test_build_engine_from_config(fake_openai):
    eng = build_engine(RewriterConfig(engine="openai", base_url=fake_openai.base_url, model="fake", max_retries=0))
    assert eng.generate("hello", system="Be brief.") == CRITIQUE
    assert eng.calls == 1 and eng.prompt_tokens > 0 and eng.completion_tokens > 0
    assert fake_openai.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(UserError, match="rewriter.local_model"):
        build_engine(RewriterConfig(engine="local"))


@pytest.fixture(scope="module")
def tiny():
    from tiny import make_tiny

    return make_tiny()


def test_local_engine_generates_and_counts(tiny):
    model, tokenizer = tiny
    eng = build_engine(RewriterConfig(engine="local", max_tokens=8), local_model=model, local_tokenizer=tokenizer)
    assert isinstance(eng, LocalEngine)
    text = eng.generate("Where is Mary?", system="Answer with one word.")
    assert isinstance(text, str)
    assert eng.calls == 1 and eng.prompt_tokens > 0 and 0 < eng.completion_tokens <= 8
    assert isinstance(as_textgrad(eng)("Where is Mary?", system_prompt=None, max_tokens=4), str)
    assert eng.calls == 2


def test_local_engine_without_chat_template(tiny):
    model, tokenizer = tiny
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="<|im_end|>")
    eng = LocalEngine(model, plain, max_new_tokens=4)
    assert isinstance(eng.generate([{"role": "user", "content": "Where is Mary?"}]), str)
    assert eng.calls == 1


def test_tiny_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny import make_tiny

    make_tiny(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert tok.chat_template and tok.pad_token == "<pad>" and tok.eos_token == "<|im_end|>"
    text = "Natalia sold 48 clips in April. Where is Mary? #### 72"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert model.config.vocab_size == len(tok)


def test_rejected_rewrite_keeps_the_candidate_for_inspection(fake_openai):
    from rewriter.engines import OpenAIEngine
    from rewriter.strategies import STRATEGIES, RewriteContext
    from nslora.tasks.base import Sample

    fake_openai.reply = lambda messages: "Where is Sandra?"
    engine = OpenAIEngine(base_url=fake_openai.base_url, model="fake", max_retries=0)
    q = "Mary moved to the bathroom.\nSandra went to the garden.\nWhere is Mary?"
    sample = Sample("s", "Answer.", q, "bathroom", "bathroom")
    res = STRATEGIES["direct"]().rewrite(sample, RewriteContext(engine, "Answer.", q, "bathroom", "garden"))
    assert res.verdict == "rejected" and res.new_question is None and res.candidate == "Where is Sandra?"
