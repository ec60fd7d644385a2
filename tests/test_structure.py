"""The package's shape: no import cycles, no upward imports, backend resolution
a constant to torch.compile, and lazy public names that still show their real
signature."""

import ast
import contextlib
import inspect
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import layerskip_kernels as lk
from layerskip_kernels import backends, ops

ROOT = pathlib.Path(lk.__file__).parent
PKG = "layerskip_kernels"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((PKG,) + parts)] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, top_level_only: bool) -> set[str]:
    """The package's modules that `name` imports (module level only, or anywhere)."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                mod = parent + ("." + node.module if node.module else "")
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


def test_no_import_cycles():
    # A module imports its package's __init__ implicitly; only explicit module-level edges count.
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n == m.rpartition(".")[0] or m == n.rpartition(".")[0] and _is_package(m):
                continue  # a package and its own submodules (the package re-exports them)
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


# Lower layers never import higher ones (function-level imports included).
LAYERS = {
    "layerskip_kernels.train": ("layerskip_kernels.generation", "layerskip_kernels.integrations",
                                "layerskip_kernels.cli"),
    "layerskip_kernels.generation": ("layerskip_kernels.train", "layerskip_kernels.integrations",
                                     "layerskip_kernels.cli"),
    "layerskip_kernels.model": ("layerskip_kernels.generation", "layerskip_kernels.train"),
    "layerskip_kernels.ops": ("layerskip_kernels.generation", "layerskip_kernels.model", "layerskip_kernels.train"),
    "layerskip_kernels.backends": ("layerskip_kernels.generation", "layerskip_kernels.model",
                                   "layerskip_kernels.train", "layerskip_kernels.ops"),
    "layerskip_kernels.cache": ("layerskip_kernels.generation", "layerskip_kernels.train"),
    "layerskip_kernels.vocab": ("layerskip_kernels.generation", "layerskip_kernels.train"),
}
# generation/: the engine's modules in dependency order; a module imports only earlier ones.
GENERATION_ORDER = ["sampling", "steps", "validation", "policy", "draft_head", "token_healing", "config",
                    "iteration", "engine", "api"]


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_no_upward_imports(layer):
    bad = []
    for m in MODULES:
        if m == layer or m.startswith(layer + "."):
            for n in _imports(m, top_level_only=False):
                if any(n == f or n.startswith(f + ".") for f in LAYERS[layer]):
                    bad.append(f"{m} imports {n}")
    assert not bad, bad


def test_generation_modules_import_downward_only():
    order = {name: i for i, name in enumerate(GENERATION_ORDER)}
    bad = []
    for name in GENERATION_ORDER:
        for n in _imports(f"{PKG}.generation.{name}", top_level_only=False):
            other = n.rpartition(".")[2]
            if n.startswith(f"{PKG}.generation.") and other in order and order[other] >= order[name]:
                bad.append(f"generation.{name} imports generation.{other}")
    assert not bad, bad


def test_import_graph_sees_imports():
    # The checks above are not vacuous: the parser finds known edges.
    assert f"{PKG}.generation.iteration" in _imports(f"{PKG}.generation.engine", True)
    assert f"{PKG}.vocab" in _imports(f"{PKG}.train.trainer", True)
    assert f"{PKG}.backends" in _imports(f"{PKG}.ops", True)


# --------------------------------------------------------------------------- backend resolution under trace


def _trace(fn, *args):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager")(*args)


@pytest.mark.parametrize("device", ["cuda", "cpu", "meta"])
def test_resolve_is_a_constant_to_the_tracer(device):
    expected = backends.resolve(torch.device(device))
    names = list(backends.BACKENDS)

    def f(x):
        return x + names.index(backends.resolve(torch.device(device)))

    assert int(_trace(f, torch.zeros(()))) == names.index(expected)


@pytest.mark.parametrize("op", backends.OPS)
@pytest.mark.parametrize("device", ["cuda", "cpu", "meta"])
def test_every_op_dispatch_traces(op, device):
    expected = ops._dispatch(op, torch.device(device))

    def f(x):
        return x + (1 if ops._dispatch(op, torch.device(device)) is expected else 0)

    assert int(_trace(f, torch.zeros(()))) == 1


@pytest.mark.parametrize("name", backends.BACKENDS)
@pytest.mark.parametrize("op", backends.OPS)
def test_every_backend_implementation_traces(name, op):
    expected = backends.implementation(op, name)

    def f(x):
        return x + (1 if backends.implementation(op, name) is expected else 0)

    assert int(_trace(f, torch.zeros(()))) == 1


def test_registry_declares_the_fallbacks():
    from layerskip_kernels import reference

    for b in backends.registry.BACKEND_LIST:
        for op in backends.OPS:
            impl = backends.implementation(op, b.name)
            assert (op in backends.fallbacks(b.name)) == (op not in b.ops)
            if op in backends.fallbacks(b.name):
                assert impl is getattr(reference, op)
    assert backends.fallbacks("triton") == ("linear_rows", "linear_rows_int8")
    assert backends.fallbacks("cpu") == ()
    table = backends.table()
    assert all(op in table for op in backends.OPS) and all(b in table for b in backends.BACKENDS)


# --------------------------------------------------------------------------- lazy public names


def test_lazy_generate_and_engine_show_their_signature():
    from layerskip_kernels.generation import api, engine

    assert inspect.signature(lk.generate) == inspect.signature(api.generate)
    assert "exit_layer" in inspect.signature(lk.generate).parameters
    assert lk.generate.__doc__ == api.generate.__doc__ and "max_new_tokens" in lk.generate.__doc__
    assert inspect.signature(lk.Engine) == inspect.signature(engine.Engine)
    assert "max_batch_size" in inspect.signature(lk.Engine).parameters
    assert "generate" in dir(lk) and "Engine" in dir(lk)


def test_import_stays_lazy():
    code = ("import sys, layerskip_kernels as lk; "
            "assert 'layerskip_kernels.generation' not in sys.modules, 'generation imported eagerly'; "
            "import inspect; assert 'exit_layer' in inspect.signature(lk.generate).parameters; "
            "assert 'layerskip_kernels.generation' in sys.modules; print('ok')")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr


HEAVY = ("transformers", "triton", "matplotlib", "torch._dynamo", "torch._inductor", "sympy")


def test_generate_imports_no_heavy_dependency():
    """`import layerskip_kernels`, then README's first command (the CLI's
    generate path, the embedded model, without --compile) load none of the
    optional heavy packages nor torch's compiler stack (the start of the process)."""
    try:
        lk.default_model_path()
    except FileNotFoundError:
        pytest.skip("no embedded default model in this install")
    code = ("import sys, layerskip_kernels; heavy = %r; "
            "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]; "
            "from layerskip_kernels.cli import main; "
            "rc = main(['generate', '--prompt', 'def f(x):', '--max-new-tokens', '4']); "
            "assert 'layerskip_kernels.generation.engine' in sys.modules; "
            "print('loaded:', [m for m in heavy if m in sys.modules], 'rc', rc)" % (HEAVY,))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "loaded: [] rc 0", p.stdout + p.stderr


# --------------------------------------------------------------------------- the compiled decode step, GPU backends
# A GPU is rarely lent to this project, so the decode step is traced here with
# the GPU backends' dispatch: `triton` (its kernels opaque ops, run by the
# interpreter) and `cuda` (resolution forced; torch.ops.layerskip then runs the
# cpu kernel on these CPU tensors). fullgraph=True: any graph break fails.


@pytest.fixture(scope="module")
def d16_model(tmp_path_factory):
    from helpers import make_hf_checkpoint

    path = tmp_path_factory.mktemp("trace_d16")
    make_hf_checkpoint(path, "gqa_tied", num_hidden_layers=4, head_dim=16)  # a head dim every backend runs
    return lk.LlamaForCausalLM.from_pretrained(path)


def _gpu_resolution(monkeypatch, name):
    if name == "cuda":
        if backends.native() is None:
            pytest.skip("layerskip_kernels._C is not built")
        monkeypatch.setattr(backends, "resolve", lambda device: "cuda")
        return contextlib.nullcontext()
    return lk.use_backend(name)


@pytest.mark.parametrize("head", [None, "int8"])
@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_compiled_decode_step_traces_with_gpu_backend_dispatch(d16_model, monkeypatch, name, head):
    from layerskip_kernels.cache import StaticKVCache
    from layerskip_kernels.generation import steps
    from layerskip_kernels.generation.draft_head import DraftHead
    from layerskip_kernels.generation.sampling import DecodingAids

    m, E, k = d16_model, 2, 3
    m.rope(32, "cpu")
    m.refresh_decode_weights()
    draft_head = None if head is None else DraftHead(m, quantization=head)

    def fresh():
        cache = StaticKVCache.for_model(m, 2, 32)
        cache.seqlens.copy_(torch.tensor([3, 9], dtype=torch.int32))
        return cache

    tokens = torch.tensor([5, 7])
    aids = DecodingAids(repetition_penalty=1.3)
    with _gpu_resolution(monkeypatch, name), torch.inference_mode():
        assert backends.resolve(tokens.device) == name
        for fn, extra in ((steps.speculate_greedy, (E, k)), (steps.greedy_token, ())):
            eager_cache, traced_cache = fresh(), fresh()
            history = torch.zeros(2, 32, dtype=torch.int64)
            tail = (draft_head,) if fn is steps.speculate_greedy else (aids, history.clone())
            args = lambda cache: (*extra, tokens, cache, *((cache.seqlens,) if extra else ()))
            expected = fn(m, *args(eager_cache), *tail)
            tail = (draft_head,) if fn is steps.speculate_greedy else (aids, history.clone())
            got = _trace(fn, m, *args(traced_cache), *tail)
            for a, b in zip(expected if isinstance(expected, tuple) else (expected,),
                            got if isinstance(got, tuple) else (got,)):
                assert torch.equal(a, b), fn.__name__
            assert torch.equal(eager_cache.k, traced_cache.k) and torch.equal(eager_cache.v, traced_cache.v)


def test_int8_head_gpu_path_traces():
    from layerskip_kernels.model.linear import linear_int8_aten

    x = torch.randn(3, 16, dtype=torch.bfloat16)
    w = torch.randint(-127, 128, (40, 16), dtype=torch.int8)
    s = torch.rand(40) / 100
    assert torch.equal(_trace(linear_int8_aten, x, w, s), linear_int8_aten(x, w, s))


def test_cuda_head_dims_are_the_kernels():
    """The registry's head dims of the cuda backend (checked in Python before the
    kernel) are the ones csrc/cuda accepts."""
    import re

    src = (ROOT.parent / "csrc" / "cuda" / "attention_kernels.cuh")
    if not src.exists():
        pytest.skip("no CUDA sources in this install")
    body = re.search(r"bool supported_head_dim\(int64_t D\) \{(.*?)\}", src.read_text(), re.S)
    assert body, "supported_head_dim not found in csrc/cuda/attention_kernels.cuh"
    dims = tuple(sorted(int(d) for d in re.findall(r"D == (\d+)", body.group(1))))
    assert dims == backends.registry.BY_NAME["cuda"].head_dims


def test_unsupported_head_dim_is_refused_before_the_kernel(monkeypatch):
    if backends.native() is None:
        pytest.skip("layerskip_kernels._C is not built")
    monkeypatch.setattr(backends, "resolve", lambda device: "cuda")
    called = []
    monkeypatch.setattr(backends, "implementation", lambda op, name: called.append(op))
    B, S, Hq, Hkv, D = 1, 1, 2, 1, 8
    kc = torch.zeros(B, Hkv, 8, D)
    with pytest.raises(ValueError, match="head dim D=8"):
        ops.draft_verify_attention(torch.randn(B, S, Hq, D), kc, kc.clone(), torch.randn(B, S, Hkv, D),
                                   torch.randn(B, S, Hkv, D), torch.zeros(B, dtype=torch.int32))
    assert not called


def test_every_subpackage_is_installed_by_a_non_editable_install():
    """pyproject's package list is what a wheel (or .ci/run's vLLM venv) gets:
    every directory of layerskip_kernels with an __init__.py must be in it."""
    import tomllib

    import setuptools

    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    if "packages" in cfg and isinstance(cfg["packages"], list):
        packaged = set(cfg["packages"])
    else:
        find = cfg.get("packages", {}).get("find", {})
        packaged = set(setuptools.find_packages(str(root), include=find.get("include", ["*"])))
    on_disk = {".".join(p.parent.relative_to(root).parts)
               for p in (root / "layerskip_kernels").rglob("__init__.py")}
    assert on_disk, "no package found on disk"
    assert on_disk <= packaged, f"not installed by `pip install .`: {sorted(on_disk - packaged)}"
