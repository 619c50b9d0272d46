#!/usr/bin/env bash
# genzoo vs peer libraries (benchmarks/peers.py): builds benchmarks/.venv-peers if it is missing or older than
# benchmarks/peers-requirements.txt, then runs the benchmark with any arguments given (default: all pairs,
# 2 threads). `make bench` calls it as `bash benchmarks/peers.sh`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv-peers"
python="${PEERS_PYTHON:-python3.11}"

if [ ! -f "$venv/.installed" ] || [ "$here/peers-requirements.txt" -nt "$venv/.installed" ]; then
    echo "building $venv ..." >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The CPU build of torch from PyTorch's CPU index, where that index is reachable (fail fast where not) ...
    "$venv/bin/python" -m pip install --quiet --retries 0 --timeout 15 torch==2.13.0 \
        --index-url https://download.pytorch.org/whl/cpu 2>/dev/null || echo "(PyTorch's CPU index not reachable)" >&2
    # ... then the peers, with torch pinned in the same command.
    "$venv/bin/python" -m pip install --quiet -r "$here/peers-requirements.txt"
    touch "$venv/.installed"
fi

# The verified dataset files beside the checkout, as the Makefile uses them (else genzoo downloads them).
if [ -z "${GENZOO_DATA_DIR:-}" ] && [ -d "$root/../shared/data" ]; then
    export GENZOO_DATA_DIR="$(cd "$root/../shared/data" && pwd)"
fi
cd "$root"
exec "$venv/bin/python" benchmarks/peers.py "$@"
