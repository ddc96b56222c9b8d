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

# Interleaved (alone, lcm, python, alone, lcm, ...), so that whatever else the machine
# does falls on all three alike; medians over the repeats.
import re
alone_s, fast_s, lcm_wall, lcm_main, lcm_pipe, py_times = [], [], [], [], [], []
script = os.path.join(os.path.dirname(os.path.abspath(lcm)), "../../scripts/bench/neox_preprocess.py")
for r in range(repeats):
    _, o = run([lcm, "bench", "tokenizer", "--input", shard, "--tokenizer", tok, "--threads", str(workers),
                "--repeats", "1", "--json", f"{out}/tokenizer.json"])
    alone, fast = [json.loads(l) for l in open(f"{out}/tokenizer.json")]
    alone_s.append(alone["seconds"])
    fast_s.append(fast["seconds"])
    for l in o.strip().splitlines():
        print(f"[{r}] {l}", flush=True)
    dt, o = run([lcm, "preprocess", "pile", "--input", shard, "--output", f"{out}/lcm", "--tokenizer", tok,
                 "--workers", str(workers), "--force"])
    m = re.search(r"in ([\d.]+) s: .* over the ([\d.]+) s after", o)
    lcm_wall.append(dt); lcm_main.append(float(m.group(1))); lcm_pipe.append(float(m.group(2)))
    print(f"[{r}] lcm: {dt:.2f} s wall; {o.strip().splitlines()[0]}", flush=True)
    dt, o = run([py, script, "--input", shard, "--output-prefix", f"{out}/neox", "--tokenizer", tok,
                 "--workers", str(workers)])
    py_times.append(dt)
    print(f"[{r}] python: {dt:.2f} s wall; {o.strip()}", flush=True)
summary = json.load(open(f"{out}/lcm.json"))
tokens = summary["tokens"]
py_tokens = json.loads(o)["tokens"]
alone_tps = alone["tokens"] / statistics.median(alone_s)
fast_tps = fast["tokens"] / statistics.median(fast_s)
same = all(filecmp.cmp(f"{out}/lcm{e}", f"{out}/neox_text_document{e}", shallow=False) for e in (".bin", ".idx"))
med = statistics.median
lcm_s, py_s = med(lcm_wall), med(py_times)
rate = lambda secs: tokens / med(secs)
res = {
    "date": time.strftime("%Y-%m-%d"),
    "machine": f"{os.cpu_count()} cores, {platform.machine()}, load average before: {os.getloadavg()}",
    "shard": shard,
    "documents": summary["documents"],
    "text_mb": summary["text_bytes"] / 1e6,
    "tokens": tokens,
    "workers": workers,
    "tokenizer_alone_seconds": alone_s,
    "tokenizer_alone_tokens_per_s": alone_tps,
    "lcm_encoder_alone_seconds": fast_s,
    "lcm_encoder_alone_tokens_per_s": fast_tps,
    "lcm_wall_seconds": lcm_wall,
    "lcm_after_startup_seconds": lcm_main,
    "lcm_pipeline_seconds": lcm_pipe,
    "lcm_tokens_per_s_wall": rate(lcm_wall),
    "lcm_tokens_per_s_after_startup": rate(lcm_main),
    "lcm_tokens_per_s_pipeline": rate(lcm_pipe),
    "python_wall_seconds": py_times,
    "python_tokens_per_s_wall": py_tokens / py_s,
    "identical_bytes": same,
}
res["lcm_vs_tokenizer_alone"] = {k: res[f"lcm_tokens_per_s_{k}"] / alone_tps for k in ("wall", "after_startup", "pipeline")}
res["lcm_vs_lcm_encoder_alone"] = {k: res[f"lcm_tokens_per_s_{k}"] / fast_tps for k in ("wall", "after_startup", "pipeline")}
res["lcm_vs_python_wall"] = res["lcm_tokens_per_s_wall"] / res["python_tokens_per_s_wall"]
json.dump(res, open(f"{out}/results.json", "w"), indent=2)
v, w = res["lcm_vs_tokenizer_alone"], res["lcm_vs_lcm_encoder_alone"]
print(f"""
shard {shard}: {res['documents']} documents, {res['text_mb']:.1f} MB of text, {tokens} tokens (EOD included), {workers} workers, median of {repeats}
                                                                                    vs tokenizers  vs lcm encoder
  tokenizer alone: tokenizers encode_fast, texts in memory {alone_tps:>10,.0f} tokens/s  {med(alone_s):6.2f} s
  tokenizer alone: lcm encoder (ASCII fast path)           {fast_tps:>10,.0f} tokens/s  {med(fast_s):6.2f} s
  lcm preprocess pile, pipeline (after tokenizer load)     {rate(lcm_pipe):>10,.0f} tokens/s  {med(lcm_pipe):6.2f} s  {v['pipeline']:6.1%}  {w['pipeline']:6.1%}
  lcm preprocess pile, from main() (+ tokenizer load)      {rate(lcm_main):>10,.0f} tokens/s  {med(lcm_main):6.2f} s  {v['after_startup']:6.1%}  {w['after_startup']:6.1%}
  lcm preprocess pile, process wall (+ libtorch start-up)  {rate(lcm_wall):>10,.0f} tokens/s  {lcm_s:6.2f} s  {v['wall']:6.1%}  {w['wall']:6.1%}
  GPT-NeoX way in Python, process wall                     {res['python_tokens_per_s_wall']:>10,.0f} tokens/s  {py_s:6.2f} s
  lcm / Python (process wall both) = {res['lcm_vs_python_wall']:.2f}x (target >= 1.5x); targets: >= 90% of alone
  .bin/.idx identical to Python's: {same}""")
if not same or py_tokens != tokens:
    sys.exit("[bench-preprocess] error: lcm and the Python implementation wrote different bytes")
PY
