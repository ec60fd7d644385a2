"""Run-time CPU dispatch of the cpu kernels (csrc/cpu/dispatch.h).

The levels the extension reports and the errors for levels that cannot run
(set_cpu_level, LAYERSKIP_CPU_CAPABILITY); the exact ops giving identical
results on every level; and the built binary keeping every AVX/AVX-512
instruction inside the level-specific kernels, so that the baseline code runs
on any x86-64 CPU.
"""

import os
import platform
import re
import subprocess
import sys

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels import reference

from conftest import CPU_LEVELS, cpu_level_params, running_cpu_level

native = lk.backends.native()
pytestmark = pytest.mark.skipif(native is None, reason="layerskip_kernels._C is not built")
X86 = platform.machine().lower() in ("x86_64", "amd64")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_levels_reported():
    info = native.build_info()
    assert info["cpu_levels"] == (list(CPU_LEVELS) if X86 else ["baseline"])
    supported = native.supported_cpu_levels()
    assert supported[0] == "baseline" and set(supported) <= set(info["cpu_levels"])
    # Without LAYERSKIP_CPU_CAPABILITY the best supported level runs.
    if not os.environ.get("LAYERSKIP_CPU_CAPABILITY"):
        assert info["cpu_level"] == native.cpu_level() == supported[-1]
    # A level is supported exactly when the CPU has its instruction sets.
    isa = set(info["cpu_isa"])
    assert ("avx2" in supported) == ({"avx2", "fma", "f16c"} <= isa)
    assert ("avx512" in supported) == ({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"} <= isa)
    assert ("avx512_bf16" in supported) == ("avx512" in supported and "avx512bf16" in isa)


@pytest.mark.parametrize("name", ["avx3", "AVX2", "", "native"])
def test_set_cpu_level_refuses_unknown_names(name):
    before = native.cpu_level()
    with pytest.raises(RuntimeError, match=r"is not a CPU level; the levels are baseline, avx2, avx512, avx512_bf16"):
        native.set_cpu_level(name)
    assert native.cpu_level() == before


def test_set_cpu_level_switches(cpu_level):
    assert native.cpu_level() == cpu_level == native.build_info()["cpu_level"]


def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_environment_forces_a_level():
    for level in native.supported_cpu_levels():
        r = _run("import layerskip_kernels._C as c; print(c.cpu_level())", LAYERSKIP_CPU_CAPABILITY=level)
        assert r.returncode == 0 and r.stdout.strip() == level, r.stderr


def test_environment_with_a_bad_level_is_a_clear_error():
    # The first use of the extension (the package's import asks it for its
    # build_info) raises a RuntimeError that names the variable and the levels,
    # rather than falling back on anything silently.
    r = _run("import layerskip_kernels", LAYERSKIP_CPU_CAPABILITY="avx9000")
    assert r.returncode != 0, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: LAYERSKIP_CPU_CAPABILITY=avx9000"), r.stderr[-2000:]
    assert "baseline, avx2, avx512, avx512_bf16" in last, last


def test_unsupported_level_is_a_clear_error():
    unsupported = [lvl for lvl in CPU_LEVELS if lvl not in native.supported_cpu_levels()]
    if not unsupported:
        # Every level runs here: a level the CPU lacks cannot be asked for, so
        # check the message through a name this build cannot run instead.
        with pytest.raises(RuntimeError, match="set_cpu_level\\('avx512-bf16'\\)"):
            native.set_cpu_level("avx512-bf16")
        return
    level = unsupported[0]
    with pytest.raises(RuntimeError, match=f"does not support {level}|has no {level} kernels"):
        native.set_cpu_level(level)
    r = _run("import layerskip_kernels._C as c; c.cpu_level()", LAYERSKIP_CPU_CAPABILITY=level)
    assert r.returncode != 0 and f"LAYERSKIP_CPU_CAPABILITY={level}" in r.stderr


# --------------------------------------------------------------------------- identical results on every level


def _exact_cases():
    g = torch.Generator().manual_seed(7)
    V = 1000
    logits = torch.randint(-4, 5, (3, 5, V), generator=g).float()  # many ties: the first maximum wins
    logits[1, 2, 17] = float("nan")
    drafts = logits.argmax(-1)[:, :4].clone()
    drafts[0, 2] = (drafts[0, 2] + 1) % V
    p = torch.rand(3, 5, V, generator=g)
    p[:, :, ::3] = 0
    p = p / p.sum(-1, keepdim=True)
    q = torch.rand(3, 4, V, generator=g)
    q = q / q.sum(-1, keepdim=True)
    sdrafts = torch.randint(0, V, (3, 4), generator=g)
    lens = torch.tensor([4, 1, 0], dtype=torch.int32)
    x = torch.randint(-3, 4, (12, 200), generator=g)
    w = torch.randint(-3, 4, (70, 200), generator=g)
    w8 = torch.randint(-128, 128, (70, 200), generator=g, dtype=torch.int8)
    scale = 2.0 ** torch.randint(-6, 1, (70,), generator=g).float()
    return [
        ("greedy fp32", lambda: torch.ops.layerskip.verify_greedy(drafts, logits)),
        ("greedy bf16", lambda: torch.ops.layerskip.verify_greedy(drafts, logits.bfloat16())),
        ("greedy fp16 lens", lambda: torch.ops.layerskip.verify_greedy(drafts, logits.half(), lens)),
        ("sampling", lambda: torch.ops.layerskip.verify_sampling(sdrafts, q, p, 1234, 5)),
        ("sampling lens", lambda: torch.ops.layerskip.verify_sampling(sdrafts, q, p, 99, 0, lens)),
        ("linear bf16", lambda: torch.ops.layerskip.linear_rows(x.bfloat16(), w.bfloat16())),
        ("linear fp32", lambda: torch.ops.layerskip.linear_rows(x.float(), w.float())),
        ("int8 bf16", lambda: torch.ops.layerskip.linear_rows_int8(x.bfloat16(), w8, scale)),
        ("int8 fp32", lambda: torch.ops.layerskip.linear_rows_int8(x.float(), w8, scale)),
    ]


def test_exact_ops_are_identical_on_every_level():
    levels = native.supported_cpu_levels()
    results = {}
    for level in levels:
        with running_cpu_level(level):
            results[level] = [(name, fn()) for name, fn in _exact_cases()]
    base = results["baseline"]
    for level in levels[1:]:
        for (name, want), (_, got) in zip(base, results[level]):
            want = want if isinstance(want, tuple) else (want,)
            got = got if isinstance(got, tuple) else (got,)
            for a, b in zip(want, got):
                assert torch.equal(a, b), (level, name)
    # ... and they are the reference's results, not just the same as each other.
    greedy = reference.verify_greedy(*_exact_inputs_greedy())
    assert all(torch.equal(a, b) for a, b in zip(base[0][1], greedy))


def _exact_inputs_greedy():
    g = torch.Generator().manual_seed(7)
    logits = torch.randint(-4, 5, (3, 5, 1000), generator=g).float()
    logits[1, 2, 17] = float("nan")
    drafts = logits.argmax(-1)[:, :4].clone()
    drafts[0, 2] = (drafts[0, 2] + 1) % 1000
    return drafts, logits


@pytest.mark.parametrize("level", cpu_level_params())
def test_attention_close_on_every_level(level):
    # Attention sums in a level-dependent order: not bit-identical, but every
    # level within the reference's own error of the fp64 truth (test_attention_ops
    # checks each level against that bound on its grid; this is a quick
    # cross-check of one verify-sized case between levels).
    from test_attention_ops import make_case

    args = make_case(2, 4, 8, 2, 64, torch.float32, True, "cpu", T_max=90, seed=3)
    want = reference.draft_verify_attention(*[a.clone() if a is not None else None for a in args])
    with running_cpu_level(level):
        got = torch.ops.layerskip.draft_verify_attention(*[a.clone() if a is not None else None for a in args])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


# --------------------------------------------------------------------------- the binary


def _vector_instructions_outside_levels(so_path):
    """Functions of the built extension with a VEX/EVEX instruction (AVX and
    later, ymm/zmm/opmask registers included) whose name is not inside a
    per-level namespace (layerskip::cpu::{avx2,avx512,avx512_bf16}::)."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", so_path], capture_output=True, text=True,
                         check=True).stdout
    allowed = re.compile(r"layerskip::cpu::(avx2|avx512|avx512_bf16)::")
    header = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    # v-prefixed mnemonics (AVX, FMA, AVX-512), ymm/zmm/opmask registers, and the
    # VEX-encoded or post-x86-64 integer instructions objdump prints without a
    # "v" (BMI1/2, LZCNT, POPCNT, MOVBE, explicit {vex}/{evex} forms).
    vector = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+\s|.*%[yz]mm|.*%k[0-7]|\{vex\}|\{evex\}|"
                        r"(andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|tzcnt|lzcnt|"
                        r"popcnt|movbe)\s)")
    bad, fn, counts = {}, None, {"level": 0, "other": 0}
    for line in out.splitlines():
        m = header.match(line)
        if m:
            fn = m.group(1)
            continue
        if fn is not None and vector.match(line):
            if allowed.search(fn):
                counts["level"] += 1
            else:
                bad.setdefault(fn, line.strip())
    return bad, counts


def test_avx_instructions_only_in_level_kernels():
    if not X86:
        assert native.build_info()["cpu_levels"] == ["baseline"]
        return
    bad, counts = _vector_instructions_outside_levels(native.__file__)
    assert not bad, "AVX instructions outside the per-level kernels:\n" + "\n".join(
        f"{fn}: {insn}" for fn, insn in list(bad.items())[:20])
    assert counts["level"] > 1000  # the level kernels are there, and the scan sees them
