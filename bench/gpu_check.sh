#!/usr/bin/env bash
# The GPU check: gpu-marked tests, bench/grad_norm.py on a random 1B Llama, and a routed run end to end on a random
# 1B Llama against the fake OpenAI server (tests/fake_openai.py) as its own process on 127.0.0.1. Prints one JSON
# line at the end (each part's status, rc, seconds and key figures); exits non-zero if any part failed.
#
#   bash bench/gpu_check.sh              # on a CUDA machine, within 8 minutes
#   bash bench/gpu_check.sh --cpu-smoke  # tiny versions of all three on CPU, well under 90 s
#
# Everything it writes goes to one temporary folder, removed at exit: the repository stays untouched.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nslora-gpu-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Offline, no bytecode or caches beside the sources, and every library cache in the temporary folder.
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONDONTWRITEBYTECODE=1
export XDG_CACHE_HOME="$tmp/cache" TEXTGRAD_LOG_DIR="$tmp/textgrad-logs" MPLCONFIGDIR="$tmp/matplotlib"

# A hard stop past the parts' own limits, so a hung child can never outlast the budget.
limit=480
for arg in "$@"; do [ "$arg" = "--cpu-smoke" ] && limit=240; done

cd "$root"
timeout -k 10 "$limit" "$py" bench/gpu_check.py --tmp "$tmp" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "{\"check\": \"gpu\", \"status\": \"failed\", \"failed\": [\"timeout\"], \"rc\": $rc, \"seconds\": $limit}"
fi
exit "$rc"
