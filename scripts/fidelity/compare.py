#!/usr/bin/env python3
"""Fidelity harness: lcm's DRT against the reference implementation's own code.

Builds the reference DRT (ant-research/long-context-modeling: model/DRT.py, model/llama.py)
from a checkout given on the command line, with the same random weights as an lcm DRT of
the same config, runs one forward and backward of both on the same tokens and compares
the logits, the loss, every parameter's gradient and the retrievals. docs/fidelity.md
describes what is compared, the tolerances, the results and every by-design difference.

Steps (each lcm step is a command of the product):
  1. lcm debug init --model MODEL [--set ...] --seed S --out WORK/init   (random weights)
  2. lcm export WORK/init --out WORK/reference --names reference --dtype f32
  3. random tokens (N, T) in [0, min(landmark, pad)), written to WORK/tokens.safetensors
  4. lcm debug grads --checkpoint WORK/init --tokens ... --names reference --dtype D
  5. the reference: stand-ins for flash-attn, xformers' SwiGLU, the fused RMSNorm and loss
     and the Triton GCA kernel (standins.py), DRTForCausalLM(LlamaConfig(config.json)),
     load_state_dict(strict=True) of WORK/reference, train() mode without Gumbel noise,
     forward(labels=tokens, output_logits=True), backward
  6. per tensor: max |lcm - ref|, that over max |ref| (rel), and the relative L2 error,
     against the tolerance of the dtype; per retrieval group, the chosen chunks and their
     weights; exit status 1 if any tensor is out of tolerance or a name is missing.
     With bf16 the reference's top-k takes lcm's chunks (its own choice is reported) and a
     second reference run in fp32 gives each side's error against the exact value.

Requirements: torch (the project venv's: .venv/bin/python), and for the reference
transformers 4.36.2 and einops 0.8.0 with what they import, pinned in requirements.txt,
in a folder of their own on PYTHONPATH (nothing is installed into the repository or its
venv):
  .venv/bin/python -m pip install --no-deps --target /tmp/fidelity-site \\
      -r scripts/fidelity/requirements.txt
The reference checkout is fetched, never vendored:
  git clone https://github.com/ant-research/long-context-modeling /tmp/ref   (HEAD aa7fa60)

CPU, fp32 (8 chunks of 63; seconds with the debug build; cpu-suite.sh runs the set of
docs/fidelity.md):
  PYTHONPATH=/tmp/fidelity-site .venv/bin/python scripts/fidelity/compare.py \\
      --reference /tmp/ref --lcm target/debug/lcm --model configs/models/drt-tiny.json \\
      --set vocab_size=1000 --set drt.landmark_id=999 --set drt.chunk_size=63 \\
      --len 504 --batch 2 --device cpu --dtype f32

GPU, bf16, 16K tokens at the paper's geometry (configs/models/drt-128m.json): build here,
then carry .device/fidelity (scripts/fidelity/prepare-device.sh: the reference checkout
as a tarball, the wheels above for the GPU image's Python, lcm):
  scripts/fidelity/prepare-device.sh --reference /tmp/ref   # here: fills .device/fidelity/
  # there (run with carry [".device/fidelity"]):
  scripts/fidelity/device.sh --model configs/models/drt-128m.json --len 16380 --batch 1 \\
      --device cuda --dtype bf16 --report $OUT/fidelity-16k-bf16.json
"""

import argparse
import contextlib
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import standins  # noqa: E402

# Tolerances per dtype on the relative errors of every compared tensor: fp32 on the CPU,
# where both sides compute the same math in fp32 and differ by summation order only;
# bf16 on a GPU, where lcm runs bf16 weights and activations and the reference its
# training precision (fp32 weights under bf16 autocast, an fp32 residual stream).
TOLERANCES = {
    "f32": {"metric": "rel", "tol": 1e-4},
    "bf16": {"metric": "rel_l2", "tol": 5e-2},
}

# ------------------------------------------------------------------ safetensors (torch only)

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """Every tensor of a safetensors file (CPU, sharing one buffer)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        buf = bytearray(f.read())
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        dt = _DTYPES[h["dtype"]]
        start, end = h["data_offsets"]
        numel = math.prod(h["shape"])
        if numel == 0:
            out[name] = torch.empty(h["shape"], dtype=dt)
            continue
        t = torch.frombuffer(buf, dtype=dt, count=numel, offset=start)
        assert (end - start) == numel * t.element_size(), name
        out[name] = t.reshape(h["shape"])
    return out


def write_safetensors(path, tensors):
    names = {v: k for k, v in _DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        raw = bytes(t.reshape(-1).view(torch.uint8).tolist())
        header[name] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def read_folder(folder):
    """The tensors of every `model*.safetensors` shard in `folder`."""
    out = {}
    for p in sorted(Path(folder).glob("model*.safetensors")):
        out.update(read_safetensors(p))
    return out


# ------------------------------------------------------------------ lcm side


def lcm_cmd(args, *rest):
    cmd = [args.lcm, *map(str, rest)]
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t


# ------------------------------------------------------------------ reference side


def import_reference(path, gca):
    """DRTForCausalLM and LlamaConfig of the reference checkout at `path`, its fused
    kernels replaced by the stand-ins."""
    standins.install(gca=gca)
    sys.path.insert(0, str(Path(path).resolve()))
    from transformers import LlamaConfig  # noqa: E402
    from model.DRT import DRTForCausalLM  # noqa: E402

    drt_module = sys.modules[DRTForCausalLM.__module__]
    if gca == "triton" and drt_module.gca_attn is None:
        sys.exit("--gca triton: the reference's ltriton/gca.py does not import (no triton?)")
    return DRTForCausalLM, LlamaConfig, drt_module


def align_eps(model, eps):
    """By-design difference 1 of docs/fidelity.md: the reference's
    encoder RMSNorms use LlamaConfig's default eps (1e-6; DRT.py builds `encoder_config`
    without `rms_norm_eps`) and its `lmk_norms` flash-attn's default (1e-5; built without
    eps), where lcm uses model.norm_eps for every norm. Returns the modules changed."""
    changed = []
    for name, m in model.named_modules():
        in_scope = name.startswith("model.encoder.") or name.startswith("model.lmk_norms.")
        if in_scope and isinstance(m, standins.RMSNorm) and m.eps != eps:
            changed.append((name, m.eps))
            m.eps = eps
    return changed


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class Retrievals:
    """Wraps the reference's `_perform_batch_retrieval` to record each group's top-k
    (its own choice) and weights, and with `forced` (group -> indices (N, C, K)) to make
    its top-k take those indices instead (the weights stay the reference's: softmax over
    its own scores at them)."""

    def __init__(self, drt, forced=None):
        self.drt, self.forced = drt, forced
        self.own, self.used, self.weights = {}, {}, {}
        self.group = None

    def wrap(self):
        orig = self.drt._perform_batch_retrieval

        def wrapped(lmk_embs, chunk_kvs, group_idx, use_cache=False):
            self.group = group_idx
            try:
                k, v, w, idx = orig(lmk_embs, chunk_kvs, group_idx, use_cache=use_cache)
            finally:
                self.group = None
            self.used[group_idx] = idx.detach()
            self.weights[group_idx] = w.detach()
            return k, v, w, idx

        return patched(self.drt, "_perform_batch_retrieval", wrapped)

    def topk(self, real):
        def topk(input, k, dim=-1, largest=True, sorted=True):
            values, indices = real(input, k=k, dim=dim, largest=largest, sorted=sorted)
            if self.group is None:
                return values, indices
            self.own[self.group] = indices.detach()
            if self.forced is None:
                return values, indices
            forced = self.forced[self.group].to(indices.device)
            return input.gather(dim, forced), forced

        return topk


def forced_indices(lcm_idx):
    """lcm's indices (N, C, K), -1 in empty slots, as a top-k the reference takes: the
    empty slots of row i get chunks i, i + 1, ... (not visible from row i, so score -inf
    and weight 0, as the reference's own top-k fills them). Row i has K - min(i, K) empty
    slots and C - i such chunks."""
    n, c, k = lcm_idx.shape
    out = lcm_idx.clone()
    for b in range(n):
        for i in range(c):
            empty = (out[b, i] < 0).nonzero().flatten()
            out[b, i, empty] = torch.arange(i, i + len(empty))
    return out


_REFERENCE = None


def run_reference(args, ref_dir, tokens, lcm_retrieval, dtype):
    """One forward and backward of the reference on `tokens`: `dtype` "bf16" under bf16
    autocast with fp32 weights (how the reference trains), "f32" in fp32."""
    global _REFERENCE
    if _REFERENCE is None:
        _REFERENCE = import_reference(args.reference, args.gca)
    DRTForCausalLM, LlamaConfig, drt_module = _REFERENCE
    cfg = json.loads((ref_dir / "config.json").read_text())
    torch.manual_seed(0)
    model = DRTForCausalLM(LlamaConfig(**cfg))
    state = read_folder(ref_dir)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    del state
    changed = [] if args.eps == "reference" else align_eps(model, cfg["rms_norm_eps"])
    device = torch.device(args.device)
    model.to(device).train()
    forced = None
    if args.force_selection:
        forced = {g: forced_indices(i) for g, i in lcm_retrieval.items()}
    rec = Retrievals(model.model, forced)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if dtype == "bf16"
        else contextlib.nullcontext()
    )
    # Training mode draws Gumbel noise -log(Exp(1)) for the top-k; Exp(1) draws of 1
    # make it exactly 0, as lcm's forward without noise.
    no_noise = patched(torch.Tensor, "exponential_", lambda self, *a, **k: self.fill_(1.0))
    ids = tokens.to(device)
    t = time.time()
    # The Triton GCA kernel is bf16-only: an fp32 run takes the stand-in.
    gca = contextlib.ExitStack()
    if dtype == "f32" and args.gca == "triton":
        gca.enter_context(patched(drt_module, "gca_attn", standins.gca_attention))
        gca.enter_context(patched(drt_module, "gca_kv_cache", standins.gca_attention))
    with gca, autocast, no_noise, rec.wrap(), patched(torch, "topk", rec.topk(torch.topk)):
        out = model(input_ids=ids, labels=ids, output_logits=True, use_cache=False)
    out.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - t
    grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
    return {
        "logits": out.logits.detach().cpu(),
        "loss": out.loss.detach().cpu(),
        "grads": grads,
        "own": rec.own,
        "used": rec.used,
        "weights": rec.weights,
        "eps_changed": changed,
        "seconds": seconds,
    }


# ------------------------------------------------------------------ comparison


def errors(a, b, block=1 << 24):
    """max |a - b|, max |b|, their ratio `rel`, and |a - b|_2 / |b|_2 `rel_l2`, in float64
    over blocks of `block` elements (the logits of a 16K sequence are 800M of them)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    a, b = a.detach().reshape(-1), b.detach().reshape(-1)
    max_abs = scale = sq_diff = sq_ref = 0.0
    for i in range(0, a.numel(), block):
        x = a[i : i + block].cpu().double()
        y = b[i : i + block].cpu().double()
        d = x - y
        max_abs = max(max_abs, d.abs().max().item())
        scale = max(scale, y.abs().max().item())
        sq_diff += d.square().sum().item()
        sq_ref += y.square().sum().item()
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    norm = math.sqrt(sq_ref)
    rel_l2 = math.sqrt(sq_diff) / norm if norm > 0 else (0.0 if max_abs == 0 else math.inf)
    return {"max_abs": max_abs, "max_ref": scale, "rel": rel, "rel_l2": rel_l2}


def dense_weights(idx, w, c):
    """(N, R, K) indices (any < 0 or masked get weight 0 already) and weights -> (N, R, C)."""
    d = torch.zeros(*idx.shape[:2], c, dtype=torch.float64)
    return d.scatter_add_(2, idx.clamp_min(0).long().cpu(), w.double().cpu())


def compare_retrievals(lcm, ref, n, c):
    rows = []
    for g in sorted(ref["used"]):
        li = lcm[f"retrieval.{g}.indices"]  # (N, C, K)
        lw = lcm[f"retrieval.{g}.weights"]
        own = ref["own"][g].cpu()
        differ = 0
        for b in range(n):
            for i in range(c):
                a = {int(j) for j in li[b, i] if j >= 0}
                r = {int(j) for j in own[b, i] if j < i}
                differ += a != r
        used = ref["used"][g].cpu()[:, :-1]  # (N, C-1, K) the slots the weights follow
        rw = ref["weights"][g].reshape(n, c - 1, -1)
        masked = used >= torch.arange(c - 1)[None, :, None]
        rw = rw.cpu().masked_fill(masked, 0.0)
        e = errors(dense_weights(li[:, :-1], lw[:, :-1], c), dense_weights(used, rw, c))
        rows.append({"group": g, "rows": n * c, "rows_differing": differ, "weights": e})
    return rows


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--reference", required=True, help="checkout of ant-research/long-context-modeling")
    p.add_argument("--lcm", default=str(HERE.parents[1] / "target/debug/lcm"), help="the lcm binary")
    p.add_argument("--model", required=True, help="an lcm model config (JSON)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config value (repeatable), as lcm debug init --set")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokens")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--len", type=int, required=True, help="raw tokens per sequence (a multiple of S)")
    p.add_argument("--tokens", help="a safetensors file with `tokens` (N, T) instead of random ones")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--gca", default="standin", choices=["standin", "triton"],
                   help="the reference's GCA: the PyTorch stand-in, or its own Triton kernel")
    p.add_argument("--eps", default="lcm", choices=["lcm", "reference"],
                   help="reference norms' eps: aligned to lcm's norm_eps (default) or its own")
    p.add_argument("--force-selection", action=argparse.BooleanOptionalAction, default=None,
                   help="make the reference's top-k take lcm's chunks (default: with bf16); "
                        "its own choice is compared either way")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the reference in fp32 with the same top-k, and report both "
                        "sides' errors against it (default: with bf16)")
    p.add_argument("--tol", type=float, help="override the dtype's tolerance")
    p.add_argument("--work", help="working folder (default: a temporary one, removed)")
    p.add_argument("--report", help="write the results as JSON here")
    p.add_argument("--threads", type=int, help="torch intra-op threads on the CPU")
    args = p.parse_args()
    if args.force_selection is None:
        args.force_selection = args.dtype == "bf16"
    if args.baseline is None:
        args.baseline = args.dtype == "bf16"
    if args.threads:
        torch.set_num_threads(args.threads)
    standins.self_test()
    tol = dict(TOLERANCES[args.dtype])
    if args.tol is not None:
        tol["tol"] = args.tol

    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=False)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="lcm-fidelity-")
        work = Path(tmp.name)
    init, ref_dir = work / "init", work / "reference"
    overrides = [x for s in args.set for x in ("--set", s)]
    timings = {}
    timings["lcm init"] = lcm_cmd(args, "debug", "init", "--model", args.model, *overrides,
                                  "--seed", args.seed, "--out", init)
    timings["lcm export"] = lcm_cmd(args, "export", init, "--out", ref_dir, "--names",
                                    "reference", "--dtype", "f32")
    ref_cfg = json.loads((ref_dir / "config.json").read_text())
    lcm_cfg = json.loads((init / "state.json").read_text())["config"]["model"]
    if args.tokens:
        tokens = read_safetensors(args.tokens)["tokens"].long()
    else:
        hi = min(ref_cfg["chunk_id"], ref_cfg["pad_id"])
        g = torch.Generator().manual_seed(args.seed)
        tokens = torch.randint(0, hi, (args.batch, args.len), generator=g)
    write_safetensors(work / "tokens.safetensors", {"tokens": tokens})
    timings["lcm grads"] = lcm_cmd(args, "debug", "grads", "--checkpoint", init, "--tokens",
                                   work / "tokens.safetensors", "--out", work / "lcm.safetensors",
                                   "--names", "reference", "--device", args.device,
                                   "--dtype", args.dtype)
    lcm = read_safetensors(work / "lcm.safetensors")
    n, t = tokens.shape
    c = t // ref_cfg["enc_chunk_size"]
    lcm_retrieval = {int(k.split(".")[1]): v for k, v in lcm.items()
                     if k.startswith("retrieval.") and k.endswith(".indices")}
    ref = run_reference(args, ref_dir, tokens, lcm_retrieval, args.dtype)
    timings[f"reference forward+backward ({args.dtype})"] = ref["seconds"]
    base = None
    if args.baseline:
        base = run_reference(args, ref_dir, tokens, lcm_retrieval, "f32")
        timings["reference forward+backward (f32 baseline)"] = base["seconds"]

    lcm_grads = {k[len("grad."):]: v for k, v in lcm.items() if k.startswith("grad.")}
    missing = sorted(set(ref["grads"]) - set(lcm_grads))
    extra = sorted(set(lcm_grads) - set(ref["grads"]))

    def tensors(side):
        out = {"logits": side["logits"], "loss": side["loss"]}
        out.update({f"grad {k}": v for k, v in side["grads"].items()})
        return out

    lcm_t = {"logits": lcm["logits"], "loss": lcm["loss"]}
    lcm_t.update({f"grad {k}": v for k, v in lcm_grads.items()})
    ref_t = tensors(ref)
    base_t = tensors(base) if base else None
    rows = []
    for name, r in ref_t.items():
        if name not in lcm_t:
            continue
        e = errors(lcm_t[name], r)
        if base_t:
            e["lcm_vs_f32"] = errors(lcm_t[name], base_t[name])["rel_l2"]
            e["ref_vs_f32"] = errors(r, base_t[name])["rel_l2"]
        rows.append((name, e))
    retrieval = compare_retrievals(lcm, ref, n, c)

    metric, limit = tol["metric"], tol["tol"]
    print()
    print(f"lcm {args.dtype} vs reference ({'autocast bf16' if args.dtype == 'bf16' else 'fp32'})"
          f" on {args.device}: tokens {n} x {t}, {c} chunks, {len(ref['grads'])} parameters,"
          f" logits {tuple(lcm['logits'].shape)}")
    print(f"tolerance: {metric} <= {limit:g}   (rel = max|lcm-ref| / max|ref|,"
          f" rel_l2 = |lcm-ref|_2 / |ref|_2)")
    if base:
        print("baseline: the reference in fp32 with the same top-k; lcm_f32 and ref_f32 are the"
              " rel_l2 of lcm and of the reference against it")
    print(f"{'tensor':<62} {'max_abs':>10} {'rel':>10} {'rel_l2':>10}"
          + (f" {'lcm_f32':>10} {'ref_f32':>10}" if base else ""))
    failed = []
    for name, e in rows:
        ok = e[metric] <= limit
        if not ok:
            failed.append(name)
        extra_cols = f" {e['lcm_vs_f32']:10.3e} {e['ref_vs_f32']:10.3e}" if base else ""
        print(f"{name:<62} {e['max_abs']:10.3e} {e['rel']:10.3e} {e['rel_l2']:10.3e}"
              f"{extra_cols}{'' if ok else '  FAIL'}")
    print(f"loss: lcm {lcm['loss'].item():.7f}  reference {ref['loss'].item():.7f}")
    for r in retrieval:
        print(f"retrieval group {r['group']}: {r['rows_differing']} of {r['rows']} top-k choices"
              f" differ (the reference's own top-k), weights max_abs {r['weights']['max_abs']:.3e}"
              f"{' (reference forced to lcm choices)' if args.force_selection else ''}")
    if ref["eps_changed"]:
        olds = sorted({e for _, e in ref["eps_changed"]})
        print(f"reference eps aligned to norm_eps {ref_cfg['rms_norm_eps']:g} in "
              f"{len(ref['eps_changed'])} norms (were {olds}; --eps reference keeps them)")
    if missing or extra:
        print(f"gradient names: missing in lcm {missing}, not in the reference {extra}")
        failed.append("names")
    sel_fail = [r for r in retrieval if r["rows_differing"] and not args.force_selection]
    if sel_fail:
        failed.append("retrieval")
    for k, v in timings.items():
        print(f"time {k}: {v:.1f} s")
    print("PASS" if not failed else f"FAIL: {', '.join(failed)}")
    if args.report:
        Path(args.report).write_text(json.dumps({
            "args": vars(args), "tolerance": tol, "lcm_model": lcm_cfg, "reference_config": ref_cfg,
            "tokens": [n, t], "chunks": c,
            "loss": {"lcm": lcm["loss"].item(), "reference": ref["loss"].item()},
            "tensors": {name: e for name, e in rows}, "retrieval": retrieval,
            "eps_changed": ref["eps_changed"], "missing": missing, "extra": extra,
            "timings_s": timings, "failed": failed,
        }, indent=1))
    if tmp:
        tmp.cleanup()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
