"""Step time and peak memory of a LoRA step without C2, with fast C2 and with naive C2 (one backward per sample).

    python bench/grad_norm.py                      # SmolLM2-135M and a tiny model, batch 8
    python bench/grad_norm.py --model tiny --steps 20
    python bench/grad_norm.py --model random-llama-1b --batch 8 --dtype bfloat16   # on a GPU machine: no weights needed

Prints one JSON line per model. Modes run interleaved in one process (the machine is shared and noisy), so the
ratios compare like with like; the median over rounds is reported. Peak memory is the resident-set high-water
mark of a fresh process per mode over two steps (reset after a warm-up step).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("off", "fast", "naive")


def setup(model_name: str, batch: int, dtype: str = "float32"):
    import torch

    from adapters.lora import wrap
    from adapters.train import Item
    from router.config import LoraConfig, TaskConfig
    from nslora.tasks import load_task

    if model_name.startswith("random-llama-"):
        model, tok = random_llama(model_name)
    else:
        from bench_models import load

        model, tok = load(model_name)
    model = model.to(getattr(torch, dtype))
    _, train, _ = load_task(TaskConfig(name="babi", n_train=batch, n_heldout=1, seed=0))
    items = [Item(s.id, s.system, s.question, s.target) for s in train]
    lora = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    torch.manual_seed(0)
    return wrap(model, lora, seed=0), tok, items


# Llama-shaped models with random weights: the step cost depends on the shapes, not on the values.
SHAPES = {
    "random-llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=32000),
    "random-llama-small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                               num_key_value_heads=4, vocab_size=32000),
}


def random_llama(name: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import make_tokenizer

    tok = make_tokenizer()  # its ids fit in any vocabulary of the shapes above
    cfg = LlamaConfig(**SHAPES[name], max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tok


def trainer_for(model, tok, mode):
    from adapters.train import Trainer

    return Trainer(copy.deepcopy(model), tok, lr=1e-4, grad_norm=mode)


def timings(model_name: str, batch: int, steps: int, dtype: str = "float32") -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model, tok, items = setup(model_name, batch, dtype)
    trainers = {m: trainer_for(model, tok, m) for m in MODES}
    for t in trainers.values():  # warm-up
        t.step(items)
    times = {m: [] for m in MODES}
    for _ in range(steps):
        for m in MODES:
            started = time.perf_counter()
            trainers[m].step(items)
            times[m].append(time.perf_counter() - started)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "step_seconds": {m: round(v, 4) for m, v in med.items()},
        "fast_over_off": round(med["fast"] / med["off"], 3),
        "naive_over_fast": round(med["naive"] / med["fast"], 3),
    }


def peak_rss_mb(model_name: str, batch: int, mode: str, dtype: str = "float32") -> float:
    out = subprocess.run([sys.executable, __file__, "--model", model_name, "--batch", str(batch), "--memory-mode", mode,
                          "--dtype", dtype],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(model_name: str, batch: int, mode: str, dtype: str = "float32") -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model, tok, items = setup(model_name, batch, dtype)
    from adapters.train import Trainer

    trainer = Trainer(model, tok, lr=1e-4, grad_norm=mode)
    trainer.step(items)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            trainer.step(items)
        print(torch.cuda.max_memory_allocated() / 2**20)
        return
    # Reset the kernel's high-water mark so the peak covers the training steps, not the model load.
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(2):
        trainer.step(items)
    print(_vm_hwm_kb() / 1024)


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="smollm2-135m-instruct, tiny, or a model path (repeatable)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and activations of the base model")
    parser.add_argument("--memory-mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or ["tiny", "smollm2-135m-instruct"]
    if args.memory_mode:
        memory_child(models[0], args.batch, args.memory_mode, args.dtype)
        return
    for name in models:
        import torch

        result = {"bench": "grad_norm", "model": name, "batch": args.batch, "steps": args.steps, "dtype": args.dtype,
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "peak_memory": "cuda max_memory_allocated" if torch.cuda.is_available() else "process VmHWM"}
        result.update(timings(name, args.batch, args.steps, args.dtype))
        result["peak_mb"] = {m: round(peak_rss_mb(name, args.batch, m, args.dtype), 1) for m in MODES}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
