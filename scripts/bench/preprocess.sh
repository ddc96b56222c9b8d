#!/usr/bin/env bash
# Benchmark of `lcm preprocess pile` (issue 3), in one run on one sample shard:
#   1. the tokenizer alone on all cores (`lcm bench tokenizer`: in-memory texts, no I/O),
#   2. `lcm preprocess pile` end to end (process wall time: start-up, tokenizer load,
#      zstd, JSON, tokenising, writing .bin/.idx),
#   3. GPT-NeoX's way in Python (scripts/bench/neox_preprocess.py: json + HF tokenizers in
#      a multiprocessing pool + numpy), end to end,
# then checks that 2 and 3 wrote identical .bin and .idx bytes. Medians of --repeats runs.
# The measurements hold /tmp/lcm-cpu.lock so that builds sharing the machine wait.
#
#   scripts/bench/preprocess.sh [--shard FILE] [--repeats N] [--workers N]
#
# Results: data/bench-preprocess/results.json and a table on stdout.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

shard=data/sample-pile/train/00.jsonl.zst
repeats=3
workers=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --shard) shard=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    *) echo "usage: $0 [--shard FILE] [--repeats N] [--workers N]" >&2; exit 2 ;;
  esac
done
say() { printf '[bench-preprocess] %s\n' "$*"; }

py=${LCM_VENV:-$repo/.venv}/bin/python
tok=$repo/assets/20B_tokenizer.json
[ -f "$tok" ] || scripts/setup.sh
[ -f "$shard" ] || scripts/make-sample-pile.sh

# The Python side: HF tokenizers (the same Rust core, behind PyO3), zstandard, numpy.
pydeps=("tokenizers==0.23.3" "zstandard==0.25.0" "numpy==2.4.6")
if "$py" - "${pydeps[@]}" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(any(m.version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
PY
  say "python deps present: ${pydeps[*]}"
else
  say "installing into the venv from PyPI: ${pydeps[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${pydeps[@]}"
fi

say "cargo build --release"
cargo build --release -q
lcm=$repo/target/release/lcm
out=$repo/data/bench-preprocess
mkdir -p "$out"

# Everything below runs under the CPU lock.
export lcm py tok shard repeats workers out
flock /tmp/lcm-cpu.lock "$py" - <<'PY'
import json, os, statistics, subprocess, sys, time, filecmp, platform

lcm, py, tok, shard, out = (os.environ[k] for k in ("lcm", "py", "tok", "shard", "out"))
repeats, workers = int(os.environ["repeats"]), int(os.environ["workers"])

def run(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return dt, r.stdout

# 1. tokenizer alone
_, o = run([lcm, "bench", "tokenizer", "--input", shard, "--tokenizer", tok, "--threads", str(workers),
            "--repeats", str(repeats), "--json", f"{out}/tokenizer.json"])
print(o.strip())
alone = json.load(open(f"{out}/tokenizer.json"))

# 2. lcm preprocess pile
lcm_times = []
for _ in range(repeats):
    dt, o = run([lcm, "preprocess", "pile", "--input", shard, "--output", f"{out}/lcm", "--tokenizer", tok,
                 "--workers", str(workers), "--force"])
    lcm_times.append(dt)
print(o.strip().splitlines()[0])
summary = json.load(open(f"{out}/lcm.json"))
tokens = summary["tokens"]

# 3. GPT-NeoX in Python
py_times = []
for _ in range(repeats):
    dt, o = run([py, os.path.join(os.path.dirname(lcm), "../../scripts/bench/neox_preprocess.py"),
                 "--input", shard, "--output-prefix", f"{out}/neox", "--tokenizer", tok, "--workers", str(workers)])
    py_times.append(dt)
print("python:", o.strip())
py_tokens = json.loads(o)["tokens"]

same = all(filecmp.cmp(f"{out}/lcm{e}", f"{out}/neox_text_document{e}", shallow=False) for e in (".bin", ".idx"))
lcm_s, py_s = statistics.median(lcm_times), statistics.median(py_times)
res = {
    "date": time.strftime("%Y-%m-%d"),
    "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
    "shard": shard,
    "documents": summary["documents"],
    "text_mb": summary["text_bytes"] / 1e6,
    "tokens": tokens,
    "workers": workers,
    "tokenizer_alone_tokens_per_s": alone["tokens_per_s"],
    "lcm_seconds": lcm_times,
    "lcm_tokens_per_s": tokens / lcm_s,
    "python_seconds": py_times,
    "python_tokens_per_s": py_tokens / py_s,
    "lcm_vs_tokenizer_alone": tokens / lcm_s / alone["tokens_per_s"],
    "lcm_vs_python": (tokens / lcm_s) / (py_tokens / py_s),
    "identical_bytes": same,
}
json.dump(res, open(f"{out}/results.json", "w"), indent=2)
print(f"""
shard {shard}: {res['documents']} documents, {res['text_mb']:.1f} MB of text, {tokens} tokens (EOD included), {workers} workers
  tokenizer alone (lcm bench tokenizer)  {alone['tokens_per_s']:>12,.0f} tokens/s   ({alone['seconds']:.2f} s)
  lcm preprocess pile, end to end        {res['lcm_tokens_per_s']:>12,.0f} tokens/s   ({lcm_s:.2f} s, median of {lcm_times})
  GPT-NeoX way in Python, end to end     {res['python_tokens_per_s']:>12,.0f} tokens/s   ({py_s:.2f} s, median of {py_times})
  lcm / tokenizer alone = {res['lcm_vs_tokenizer_alone']:.1%} (target >= 90%)
  lcm / Python          = {res['lcm_vs_python']:.2f}x (target >= 1.5x)
  .bin/.idx identical to Python's: {same}""")
if not same or py_tokens != tokens:
    sys.exit("[bench-preprocess] error: lcm and the Python implementation wrote different bytes")
PY
