#!/usr/bin/env bash
# Lease 2026-12-07g, the short engine call (the device time left after a failed start): after the
# last stage part installed vLLM, the overlay, then one eager engine with GRID_SYNC off and one
# "eager", engine cores in-process (engine_pairs.py ... inproc).
. /opt/gpu-site/env.sh
export OMP_NUM_THREADS=4
D=$OUT/short
mkdir -p "$D"
python3 -m pip install -q --no-deps --no-build-isolation --upgrade --target /opt/gpu-site/deps ./overlay > "$D/pip.log" 2>&1
echo "overlay rc $?"
timeout 200 python3 results/lease-2026-12-07g/engine_pairs.py /root/ep nvfp4 inproc > "$D/engine-pairs-inproc.log" 2>&1
echo "engine-pairs rc $?"
grep -E "^(off|sync)_" "$D/engine-pairs-inproc.log"
