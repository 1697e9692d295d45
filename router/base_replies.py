"""The untrained model's held-out replies, answered once for every run that shares an output folder.

Before the first epoch a run's adapter adds exactly zero (LoRA's B matrices start at zero), so its held-out replies
are the base model's: the same for every arm and seed of an experiment that asks the same held-out prompts. The
first run to answer writes them to <run.out_dir>/.base-replies/<key>.json and later runs read them instead of
generating again (one of the two held-out passes of a controlled run, a sixth to a third of its wall time). The key
hashes the base weights' bytes, the prompts, the generation settings, the thread count (a different reduction order
can flip a greedy tie) and the generation code, so a changed model, prompt or code is never served an old answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from nslora.core.atomic import write_json

FOLDER = ".base-replies"


def adapter_is_zero(model) -> bool:
    """True when every LoRA B matrix is exactly zero (peft's default start), i.e. the model answers as its base."""
    found = False
    for name, p in model.named_parameters():
        if "lora_B" in name:
            found = True
            if bool(p.detach().ne(0).any()):
                return False
    return found


def weights_digest(model) -> str:
    """A hash of every base (non-LoRA) parameter's bytes, names and shapes: what the model computes."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        t = p.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def key(model, prompts: list[tuple[str, str]], max_new_tokens: int, batch_size: int) -> str:
    import adapters.generate as generate

    code = hashlib.sha256(Path(generate.__file__).read_bytes()).hexdigest()[:16]
    head = json.dumps({"weights": weights_digest(model), "prompts": prompts, "max_new_tokens": max_new_tokens,
                       "batch_size": batch_size, "threads": torch.get_num_threads(), "code": code,
                       "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(head.encode()).hexdigest()[:32]


def replies(trainer, prompts: list[tuple[str, str]], max_new_tokens: int, batch_size: int, out_dir: str | Path,
            progress=None) -> tuple[list[str], bool]:
    """(replies, read from the shared file) for the untrained model; generates and writes them on a miss.

    Only a single-process run with an all-zero adapter uses the file: elsewhere this is trainer.generate."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.world != 1 or not adapter_is_zero(model):
        return trainer.generate(prompts, max_new_tokens, batch_size, progress), False
    path = Path(out_dir) / FOLDER / f"{key(model, prompts, max_new_tokens, batch_size)}.json"
    if path.is_file():
        try:
            got = json.loads(path.read_text(encoding="utf-8"))["replies"]
        except (OSError, ValueError, KeyError):  # a damaged file is answered again and replaced
            got = None
        if isinstance(got, list) and len(got) == len(prompts) and all(isinstance(r, str) for r in got):
            if progress is not None:
                progress.update(len(prompts))
            return got, True
    answered = trainer.generate(prompts, max_new_tokens, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"replies": answered})
    return answered, False
