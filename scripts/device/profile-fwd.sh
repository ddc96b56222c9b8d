#!/usr/bin/env bash
# On the GPU machine (device tool): Nsight Compute on the SWA and GCA forward kernels and
# their SASS instruction mix. Writes $OUT/profile/{ncu-*.txt,sass-*.txt}.
#
#   BIN=./lcm scripts/device/profile-fwd.sh     (carry a release build of lcm)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/bin/lcm}
dest=${OUT:-/tmp/lcm-out}/profile
mkdir -p "$dest"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
# Stall reasons per issued instruction and the tensor / MUFU (xu) pipes' utilisation: what a
# latency-bound loop waits on.
metrics="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio,regex:sm__pipe_(tensor|shared|alu|fma|xu).*cycles_active\\.avg\\.pct_of_peak_sustained_active,regex:sm__inst_executed_pipe_(xu|alu|fma|uniform)\\.avg\\.pct_of_peak_sustained_active"
sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats"
for kv in ${PROFILES:-swa-w512:swa_fwd gca-d64:gca_fwd}; do
  bench=${kv%%:*} kern=${kv##*:}
  # shellcheck disable=SC2086
  timeout 120 scripts/gpu-test.sh exec "$ncu" --clock-control none $sections $metrics -k "regex:$kern" -c 1 \
    "$bin" bench kernels --only "$bench" --runs 1 --warmup 0 --no-reference \
    >"$dest/ncu-$bench.txt" 2>&1
  grep -E 'Duration|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Stall|Warp Cycles Per Issued' "$dest/ncu-$bench.txt" | head -20
  grep -E 'stalled|pipe' "$dest/ncu-$bench.txt" | awk '$NF + 0 >= 0.05' | head -40
done
# SASS instruction mix of each forward kernel (every instantiation)
cuobjdump -sass "$bin" >"$dest/all.sass" 2>/dev/null
for kern in swa_fwd_kernel gca_fwd_kernel; do
  awk -v k="$kern" '/Function :/ {on = index($0, k) > 0} on' "$dest/all.sass" >"$dest/sass-$kern.txt"
  echo "== $kern: $(grep -c 'Function :' "$dest/sass-$kern.txt") functions; opcode counts:"
  grep -oE '^\s+/\*[0-9a-f]+\*/\s+[A-Z][A-Z0-9.]*' "$dest/sass-$kern.txt" | awk '{print $2}' |
    sed 's/\..*//' | sort | uniq -c | sort -rn | head -14 | tr '\n' ' '
  echo
done
rm -f "$dest/all.sass"
