#!/usr/bin/env bash
# lxt 2.1 (AttnLRP / CP-LRP) does not import beside transformers 5.x (its bundled BERT file needs
# transformers.pytorch_utils.find_pruneable_heads_and_indices, gone in 5.0, and its attention patch
# replaces ALL_ATTENTION_FUNCTIONS by a plain dict that 5.x calls .get_interface on). lxt's README
# says "Tested with transformers==4.52.4", so it gets a venv of its own that shares torch with the
# system site-packages. Usage: bash benchmarks/text_faithfulness/make_lxt_env.sh [VENV_DIR]
set -euo pipefail
VENV="${1:-benchmarks/cache/lxt_venv}"
python -m venv --system-site-packages "$VENV"
# kernels<0.7: the system kernels package needs huggingface_hub 1.x, which transformers 4.52 cannot use
"$VENV/bin/pip" install -q "transformers==4.52.4" "lxt==2.1" zennit tabulate "kernels<0.7"
"$VENV/bin/python" -c "import transformers, lxt.efficient; print('lxt env ok, transformers', transformers.__version__)"
