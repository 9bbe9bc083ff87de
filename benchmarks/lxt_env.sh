#!/usr/bin/env bash
# Make the environment the lxt side of benchmarks/text_speed.py runs in.
#
# Why a separate venv: lxt 2.1 (the PyPI release) cannot import beside transformers 5.x
# (lxt/efficient/models/bert.py imports transformers.pytorch_utils.find_pruneable_heads_and_indices,
# removed in 5.0, and every lxt.efficient import goes through it), and its attention patch replaces
# ALL_ATTENTION_FUNCTIONS with a plain dict while 5.x calls .get_interface() on it. lxt says it is
# tested with transformers 4.52.4. lxt also monkey-patches transformers classes globally, so it must
# never share a process with libra_fx's own measurements.
#
# The venv sees the system site-packages (torch, numpy, the project's editable libra_fx) and shadows
# only transformers (4.52.4) and its pinned helpers (tokenizers, huggingface_hub). lxt is installed
# without its heavy optional dependencies (bitsandbytes, accelerate, open_clip) but with zennit, which
# lxt's BERT rules (benchmarks/text_faithfulness) import. One venv serves both lxt benchmarks.
#
# Usage: bash benchmarks/lxt_env.sh [VENV_DIR]   (default: benchmarks/cache/lxt-venv, git-ignored)
#        then: python -m benchmarks.text_speed --lxt-python VENV_DIR/bin/python ...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/cache/lxt-venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv --system-site-packages "$venv"
fi
# huggingface_hub < 1 as transformers 4.52 needs it; `kernels` too when the system has it: the
# system's kernels needs huggingface_hub >= 1, so transformers 4.52 would fail importing it
extra=""
if "$venv/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('kernels') is None)"; then
  extra="kernels"
fi
"$venv/bin/pip" install -q "transformers==4.52.4" "huggingface_hub<1.0" $extra
"$venv/bin/pip" install -q --no-deps "lxt==2.1"
"$venv/bin/pip" install -q tabulate zennit
"$venv/bin/python" - <<'PY'
import torch, transformers, lxt.efficient
from lxt.efficient import monkey_patch  # noqa: F401  (the API the benchmark uses)
print(f"lxt env ok: torch {torch.__version__}, transformers {transformers.__version__}")
PY
echo "$venv/bin/python"
