#!/usr/bin/env bash
# The GPU suite on a lent device (see benchmarks/gpu/README.md). Installs PyCUDA from the kit
# in .devkit/ when it is missing, runs the gpu test tier (tests/gpu, log in $OUT/gpu_tier.log),
# then the suite; extra arguments go to suite.py (--quick, --problems gemm,attention, --out DIR).
# Exit 0 only if the tier and every correctness check passed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if [ -d "$root/.devkit/site" ]; then
  export PYTHONPATH=$root/.devkit/site:${PYTHONPATH:-}
fi
if ! python3 -c "import pycuda.driver" 2>/dev/null; then
  if [ ! -f "$root/.devkit/install-pycuda.sh" ]; then
    echo "PyCUDA is missing and there is no kit in .devkit/: copy /work/shared/device/ into" \
         ".devkit/ and carry it (see benchmarks/gpu/README.md)" >&2
    exit 2
  fi
  bash "$root/.devkit/install-pycuda.sh"
  export PYTHONPATH=$root/.devkit/site:${PYTHONPATH:-}
fi
# netc without installing it (the device has no registry): its package layout as links, and
# lark (pure Python, absent there) from .devkit/py/ when copied there (see the README).
farm=$(mktemp -d)
mkdir "$farm/netc"
ln -s "$root"/compiler/* "$farm/netc/"
for pair in grammar:grammar templates:templates runtime:runtime sim:simulator; do
  ln -s "$root/${pair#*:}" "$farm/netc/${pair%%:*}"
done
export PYTHONPATH=$farm:$root:$root/.devkit/py:${PYTHONPATH:-}
python3 -c "import netc.driver" || {
  echo "netc does not import here (lark missing? copy it into .devkit/py/, see the README)" >&2
  exit 2
}
out=${OUT:-$root/benchmarks/gpu/results}
mkdir -p "$out"
# The gpu test tier first (pytest is in the device image): kernels against NumPy on the card,
# and the simulator's mma/ldmatrix/cp.async emulation against the hardware.
tier=0
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/gpu_tier.log" || tier=1
status=0
python3 "$root/benchmarks/gpu/suite.py" --out "$out" "$@" || status=$?
[ "$status" -ne 0 ] && exit "$status"
exit "$tier"
