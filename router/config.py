"""Run configuration: the sections of every component composed into one Config, read from YAML and
`--set section.key=value` overrides.

Each section's dataclass lives beside its component (adapters/config.py, nslora/tasks/config.py, policies/config.py,
rewriter/config.py); every field carries its help text, and `__post_init__` rejects impossible values with a
message that quotes them. This module owns only the run section, the composition and the loader.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from adapters.config import LoraConfig, ModelConfig, SignalsConfig, TrainConfig
from nslora.core.errors import UserError
from nslora.core.options import option, require
from policies.config import PolicyConfig, SaturationConfig
from rewriter.config import RewriterConfig
from nslora.tasks.config import TaskConfig


@dataclass
class RunConfig:
    name: str | None = option(None, "Run folder name (default: <task>-<policy>-<time>).")
    out_dir: str = option("runs", "Folder that holds run folders.")
    overwrite: bool = option(False, "Replace an existing run folder of the same name.")
    shared_dir: str | None = option(None, "Folder where runs leave what other runs can reuse: the untrained model's held-out replies, keyed by the base weights, prompts and generation settings (router/base_replies.py). Default: run.out_dir; an experiment gives all its runs its own folder.")
    progress: bool = option(True, "Show progress bars.")
    tensorboard: bool = option(False, "Write per-epoch scalars (loss, accuracy, routes, rewrites, cost) to <run>/tensorboard for `tensorboard --logdir`.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
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
        require(type(None) in args or tp is Any, f"{where} may not be empty; give a value")
        return None
    if origin is Literal:
        require(value in args, f"{where}={value!r} is not one of {', '.join(map(str, args))}")
        return value
    if type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(section, key, value, inner[0])
    if tp is bool:
        require(isinstance(value, bool), f"{where}={value!r} must be true or false")
        return value
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), f"{where}={value!r} must be an integer")
        return value
    if tp is float:
        # PyYAML (YAML 1.1) reads 1e-4 and 2e9, without a dot, as strings; everyone writes learning rates so.
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
            value = float(value)
        require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}={value!r} must be a number")
        require(not math.isnan(float(value)), f"{where} is NaN; give a number")
        return float(value)
    if tp is str:
        require(isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{where}={value!r} must be a string")
        return str(value)
    if origin is list:
        require(isinstance(value, list), f"{where}={value!r} must be a list, e.g. [a, b]")
        return [_coerce(section, key, v, args[0]) for v in value]
    if origin is dict or tp is Any:
        if origin is dict:
            require(isinstance(value, dict), f"{where}={value!r} must be a mapping")
        return value
    return value


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, refusing unknown sections and keys by name."""
    require(isinstance(raw, dict), f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    parts = {}
    for section, values in raw.items():
        require(section in SECTIONS, f"{source}: unknown section '{section}'; valid sections: {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        parts[section] = section_from_dict(globals()[cls] if isinstance(cls, str) else cls, section, values, source)
    return Config(**parts)


def section_from_dict(cls, section: str, values: Any, source: str):
    """One section's dataclass from a mapping, refusing unknown keys by name and coercing each value."""
    values = values or {}
    require(isinstance(values, dict), f"{source}: section '{section}' must be a mapping of keys")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        require(key in known, f"{source}: unknown key '{section}.{key}'; valid keys: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(section, k, v, hints[k]) for k, v in values.items()})


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings, the value parsed as YAML (so 3 is an int, [a, b] a list);
    `section.key.sub=value` sets one entry of a mapping key (e.g. task.params.fault_share=0)."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        require("=" in item and "." in item.split("=", 1)[0], f"--set {item!r}: write it as section.key=value, e.g. train.epochs=3")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        key, _, sub = key.partition(".")
        if sub:
            inner = raw.setdefault(section, {}).get(key)
            require(inner is None or isinstance(inner, dict), f"--set {item!r}: {section}.{key} is not a mapping")
            value = {**(inner or {}), sub: value}
        raw.setdefault(section, {})[key] = value
    return raw


# `nslora run` with no config: bAbI task 1 from this project's generator on SmolLM2-135M, sized to finish in under
# 3 minutes on 2 quiet CPU cores: LoRA on the top 16 of 30 layers (the backward pass stops below them; lr raised to
# match), held-out answered before and after training (in one batch of 32), and the rules rewriter, whose faithful layouts
# the guard accepts, so a first run shows rewrites trained on (`--set rewriter.strategy=direct` asks the local LLM).
# k is loose on purpose: 4 epochs of a tiny data set never flatten below the paper-like k = 0.02.
EMBEDDED_DEFAULT: dict[str, dict[str, Any]] = {
    "task": {"name": "babi", "babi_task": 1, "n_train": 64, "n_heldout": 32},
    "lora": {"top_layers": 16},
    "train": {"epochs": 4, "batch_size": 8, "lr": 0.003, "max_new_tokens": 8, "eval_every": 0, "eval_batch_size": 32},
    "saturation": {"k": 1.0, "p": 0.1, "min_epoch": 2},
    "policy": {"name": "loss-ratio"},
    "rewriter": {"engine": "local", "strategy": "rules", "max_tokens": 200},
}


def load(path: str | None, overrides: list[str] | None = None) -> Config:
    raw: dict[str, Any] = {k: dict(v) for k, v in EMBEDDED_DEFAULT.items()} if path is None else {}
    source = "embedded default"
    if path is not None:
        raw = read_yaml(path, "configs/babi.yaml")
        source = str(path)
    return from_dict(apply_overrides(raw, overrides or []), source)


def shipped_configs() -> Path:
    """The configs that come with ns-lora: nslora/configs inside an installed wheel, configs/ in a checkout."""
    top = Path(__file__).resolve().parents[1]  # site-packages, or the checkout
    return top / "nslora" / "configs" if (top / "nslora" / "configs").is_dir() else top / "configs"


def config_file(path: str) -> Path:
    """A config file: the path as given or, when no such file exists, a shipped config by its path under configs/,
    with or without .yaml (`babi`, `experiments/controlled`), so the same names work outside a checkout."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    shipped = shipped_configs()
    return next((c for c in (shipped / path, shipped / f"{path}.yaml") if c.is_file()), given)


def shipped_names() -> list[str]:
    """The shipped configs by the names config_file takes: babi, ..., experiments/babi, ..."""
    root = shipped_configs()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def read_yaml(path: str, example: str) -> Any:
    """A YAML config file's contents ({} when empty); a missing or malformed file is refused in one line."""
    p = config_file(path)
    require(p.is_file(), f"config file {path} does not exist; give a YAML file, e.g. {example}, or a shipped config: "
                         f"{', '.join(shipped_names())}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config file {path} is not valid YAML ({first}); fix the syntax") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
