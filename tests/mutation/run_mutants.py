"""Mutation check: plant each bug of MUTANTS in a copy of the package, run the
tests meant to catch it against the copy, and write tests/mutation/report.md.

    python tests/mutation/run_mutants.py [--only ID ...]

Not collected by pytest (the file name does not start with test_). Each
mutant is a list of (file, old, new) text edits on layerskip_kernels/; `old`
must occur exactly once, so a refactor of the mutated code makes the script
fail loudly instead of testing nothing. The copy is imported through
PYTHONPATH with the working directory set to the copy, so the checkout's
package (cwd, editable install) is never the one tested; each run first checks
that the imported package is the copy.

C++ kernels are not rebuilt per mutant (minutes each on 2 cores): kernel bugs
are planted in the Triton kernels (run under TRITON_INTERPRET=1) or in the
pure-PyTorch reference, which the `torch` backend runs (LAYERSKIP_BACKEND=torch
makes the engine use it). The "path" column of the report says which.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTS = os.path.join(ROOT, "tests")
REPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.md")


@dataclass
class Mutant:
    id: str
    what: str
    path: str  # which implementation carries the bug
    edits: list[tuple[str, str, str]]
    tests: list[str]  # pytest arguments (files relative to tests/, -k expressions)
    env: dict = field(default_factory=dict)


ATT = "triton/attention.py"
REF = "reference.py"
SCHED = "generation/engine.py"
SAMPLING = "generation/sampling.py"
STEPS = "generation/steps.py"
ITER = "generation/iteration.py"

MUTANTS = [
    Mutant("bonus_from_p_k_minus_1", "bonus token drawn from p[k-1] instead of p[k]", "reference (torch backend)",
           [(REF, "weights = torch.cat([residual, target_probs[:, k:]], dim=1)",
             "weights = torch.cat([residual, target_probs[:, k - 1:k]], dim=1)")],
           ["test_generation.py", "-k", "four_tokens and (k1-plain or k2-plain)"], {"LAYERSKIP_BACKEND": "torch"}),
    Mutant("philox_offset_not_advanced", "the Philox offset is not advanced between iterations", "engine",
           [(SAMPLING, "self.offset = (self.offset + 1) % 2**32", "self.offset = self.offset"),
            (SAMPLING, "self.offsets[s] = (self.offsets[s] + 1) % 2**32", "self.offsets[s] = self.offsets[s]")],
           ["test_generation.py", "-k", "four_tokens and (k1-plain or k2-plain) or fresh_random"]),
    Mutant("row_stream_offset_not_advanced",
           "the Philox offset of a request's own stream is never advanced (Engine without a shared seed)", "engine",
           [(SAMPLING, "self.offsets[s] = (self.offsets[s] + 1) % 2**32", "self.offsets[s] = self.offsets[s]")],
           ["test_generation.py", "-k", "per_request_streams"]),
    Mutant("eos_inside_accepted_run_kept", "tokens after an EOS inside an accepted run are kept", "engine",
           [(SCHED, "for j, t in enumerate(toks):\n            if t in act.req.eos_ids:",
             "for j, t in list(enumerate(toks))[-1:]:\n            if t in act.req.eos_ids:")],
           ["test_generation.py", "-k", "eos_inside"]),
    Mutant("streamer_never_called", "the streamer is never called", "engine",
           [(SCHED, "                act.req.streamer(list(toks))", "                pass")],
           ["test_cli.py", "-k", "streams"]),
    Mutant("bf16_scores_in_kernel", "attention scores rounded to bf16 inside the kernel", "Triton (interpreter)",
           [(ATT, "qk = tl.dot(q, kt, input_precision=PRECISION) * scale_log2",
             "qk = (tl.dot(q, kt, input_precision=PRECISION) * scale_log2).to(tl.bfloat16).to(tl.float32)")],
           ["test_attention_ops.py", "-k", "test_parity_grid and triton and (float16 or bfloat16)"]),
    Mutant("bf16_probs_in_kernel", "probabilities rounded to bf16 before the PV product", "Triton (interpreter)",
           [(ATT, "acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)",
             "acc += tl.dot(p.to(tl.bfloat16).to(tl.float32).to(v.dtype), v, input_precision=PRECISION)")],
           ["test_attention_ops.py", "-k", "test_parity_grid and triton and bfloat16"]),
    Mutant("scale_sqrt_D_plus_1", "default softmax scale 1/sqrt(D+1)", "Triton (interpreter)",
           [(ATT, "scale = 1.0 / math.sqrt(D) if softmax_scale", "scale = 1.0 / math.sqrt(D + 1) if softmax_scale")],
           ["test_attention_ops.py", "-k", "test_parity_grid and triton and bfloat16"]),
    Mutant("rmsnorm_without_upcast", "RMSNorm computed in the input dtype (no fp32 upcast)", "model",
           [("model/llama.py", "xf = x.float()", "xf = x")],
           ["test_model.py", "-k", "bf16"]),
    Mutant("causal_mask_off_by_one", "query s also sees key L+s+1", "Triton (interpreter)",
           [(ATT, "allowed = allowed & (t[None, :] <= last_key[:, None])",
             "allowed = allowed & (t[None, :] <= last_key[:, None] + 1)")],
           ["test_attention_ops.py", "-k", "test_parity_grid and triton"]),
    Mutant("gqa_head_mapping", "query head h reads kv head h % Hkv instead of h // G", "Triton (interpreter)",
           [(ATT, "    h = kvh * G + rows % G", "    h = (rows % G) * HKV + kvh")],
           ["test_attention_ops.py", "-k", "test_parity_grid and triton"]),
    Mutant("rope_at_pos_plus_1", "k_new rotated at position + 1", "Triton (interpreter)",
           [(ATT, "c = tl.load(cos_ptr + pos * stride_ct + j * stride_cd, mask=(d < D) & valid",
             "c = tl.load(cos_ptr + (pos + 1) * stride_ct + j * stride_cd, mask=(d < D) & valid"),
            (ATT, "sn = tl.load(sin_ptr + pos * stride_st + j * stride_sd, mask=(d < D) & valid",
             "sn = tl.load(sin_ptr + (pos + 1) * stride_st + j * stride_sd, mask=(d < D) & valid")],
           ["test_attention_ops.py", "-k", "test_parity_grid and triton and rope"]),
    Mutant("last_draft_skips_early_layers", "the last draft skips layers [0, E) before verification", "engine",
           [(STEPS, "    hidden.append(early(model, E, tok, cache, pos + k))",
             "    hidden.append(model.embed(tok[:, None])[:, 0])")],
           ["test_generation.py", "-k", "test_greedy_selfspec"]),
    Mutant("verify_recomputes_early_layers", "verification recomputes layers [0, E) of the drafted positions",
           "engine",
           [(STEPS, "        hidden, drafts = draft_greedy(model, E, k, tokens, cache, base, head)\n",
             "        hidden, drafts = draft_greedy(model, E, k, tokens, cache, base, head)\n"
             "        hidden = model.forward_layers(model.embed(torch.cat([tokens[:, None], drafts], 1)), 0, E, cache, "
             "base)\n")],
           ["test_generation.py", "-k", "no_layer_recomputes"]),
    Mutant("rejected_kv_leaks", "the cache length advances over rejected drafts (their K/V stay visible)", "engine",
           [(ITER, "*self.aids.step_args())\n        self._advance(state, accepted[:, 0] + 1, pending)",
             "*self.aids.step_args())\n        self._advance(state, k + 1, pending)")],
           ["test_generation.py", "-k", "test_greedy_selfspec"]),
    Mutant("accept_coin_times_1_1", "accept coin scaled by 1.1", "reference (torch backend)",
           [(REF, "coins.double() * q_d.double() < p_d.double()", "coins.double() * 1.1 * q_d.double() < p_d.double()")],
           ["test_acceptance_ops.py", "-k", "test_sampling_distribution and torch"]),
    Mutant("residual_replaced_by_p", "rejection resamples from p instead of max(p - q, 0)", "reference (torch backend)",
           [(REF, "residual = torch.clamp(target_probs[:, :k] - draft_probs, min=0.0)",
             "residual = target_probs[:, :k].clone()")],
           ["test_acceptance_ops.py", "-k", "test_sampling_distribution and torch"]),
]


def make_copy(m: Mutant, tmp: str) -> str:
    pkg = os.path.join(tmp, "layerskip_kernels")
    shutil.copytree(os.path.join(ROOT, "layerskip_kernels"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    # The embedded model is large and never mutated: link it.
    os.symlink(os.path.join(ROOT, "layerskip_kernels", "assets"), os.path.join(pkg, "assets"))
    for rel, old, new in m.edits:
        path = os.path.join(pkg, rel)
        src = open(path).read()
        if src.count(old) != 1:
            raise SystemExit(f"{m.id}: expected exactly one occurrence of {old!r} in {rel}, "
                             f"found {src.count(old)}: update the mutant")
        open(path, "w").write(src.replace(old, new))
    return pkg


def run_mutant(m: Mutant) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.id}-") as tmp:
        pkg = make_copy(m, tmp)
        env = dict(os.environ, PYTHONPATH=tmp, TRITON_INTERPRET="1", **m.env)
        where = subprocess.run([sys.executable, "-c", "import layerskip_kernels as l; print(l.__file__)"],
                               cwd=tmp, env=env, capture_output=True, text=True)
        if not where.stdout.strip().startswith(pkg):
            raise SystemExit(f"{m.id}: the copy is not the imported package: {where.stdout}{where.stderr}")
        args = [a if not a.endswith(".py") else os.path.join(TESTS, a) for a in m.tests]
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *args],
                             cwd=tmp, env=env, capture_output=True, text=True)
        elapsed = time.time() - t0
    failed = re.findall(r"^FAILED (\S+)", res.stdout, flags=re.M)
    killed = res.returncode == 1 and bool(failed)
    if res.returncode not in (0, 1):
        killed = False
        failed = [f"pytest exit code {res.returncode}: {res.stdout[-300:]}"]
    # pytest names the file relative to the copy's directory: keep tests/<file>::<test>.
    by = re.sub(r"^.*?([^/]+\.py::)", r"\1", failed[0]) if killed else ""
    return dict(killed=killed, by=by, seconds=elapsed,
                tail=res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-200:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    ap.add_argument("--report", default=REPORT)
    ap.add_argument("--baseline", action="store_true", help="first check that every selection passes unmutated")
    a = ap.parse_args()
    chosen = [m for m in MUTANTS if not a.only or m.id in a.only]
    if a.baseline:
        # A kill only counts if the same selection passes on the unmutated code.
        for sel in {(tuple(m.tests), tuple(sorted(m.env.items()))) for m in chosen}:
            r = run_mutant(Mutant("baseline", "", "", [], list(sel[0]), dict(sel[1])))
            if r["killed"] or "passed" not in r["tail"]:
                raise SystemExit(f"baseline fails for {' '.join(sel[0])}: {r['by'] or r['tail']}")
            print(f"baseline {' '.join(sel[0])}: {r['tail']}", flush=True)
    rows = []
    for m in chosen:
        r = run_mutant(m)
        rows.append((m, r))
        print(f"{m.id:34s} {'KILLED' if r['killed'] else 'SURVIVED'} in {r['seconds']:.0f} s by {r['by']}", flush=True)
    with open(a.report, "w") as f:
        f.write("# Mutation check\n\n"
                "Generated by `python tests/mutation/run_mutants.py` (each mutant: a copy of the package with the "
                "bug planted, the listed tests run against it with `-x`).\n\n"
                "| mutant | bug | planted in | tests run | killed by | s |\n| --- | --- | --- | --- | --- | --- |\n")
        for m, r in rows:
            sel = " ".join(m.tests).replace("|", "\\|")
            env = " ".join(f"{k}={v}" for k, v in m.env.items())
            by = r["by"] if r["killed"] else f"**SURVIVED** ({r['tail']})"
            f.write(f"| {m.id} | {m.what} | {m.path} | `{(env + ' ') if env else ''}{sel}` | {by} | "
                    f"{r['seconds']:.0f} |\n")
        n_killed = sum(r["killed"] for _, r in rows)
        f.write(f"\n{n_killed} of {len(rows)} mutants killed.\n")
    return 0 if all(r["killed"] for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
