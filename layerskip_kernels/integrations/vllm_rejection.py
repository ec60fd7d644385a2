"""vLLM's rejection sampler on our acceptance kernels (`verify_greedy`,
`verify_sampling`), plugged in through vLLM's `worker_cls` extension point.

    from vllm import LLM
    from layerskip_kernels.integrations.vllm import speculative_config
    from layerskip_kernels.integrations.vllm_rejection import WORKER_CLS

    llm = LLM(model=MODEL_DIR, speculative_config=speculative_config(exit_layer=3, num_speculative_tokens=3),
              worker_cls=WORKER_CLS)

    (server: --worker-cls layerskip_kernels.integrations.vllm_rejection.LayerSkipWorker)

`WORKER_CLS` names `LayerSkipWorker`: the worker class vLLM would use on this
platform (`CPUWorker` on CPU, the GPU `Worker` on CUDA and ROCm; other
platforms are refused) whose model runner,
once built, gets `LayerSkipRejectionSampler` in place of vLLM's
`RejectionSampler`, whatever the speculative method (tested with ours, on the
CPU backend); vLLM's source is not patched. vLLM builds the runner's
sampler in `GPUModelRunner.__init__` (`self.rejection_sampler =
RejectionSampler(...)`, which `CPUModelRunner` inherits); the worker swaps it
right after `init_device` built the runner, before any warm-up.

The sampler is a drop-in over vLLM 0.32.0's ragged layout: the same
`forward(metadata, draft_probs, logits, sampling_metadata)` and the same output
(`int32 [batch, max_spec_len + 1]`, rejected positions hold vLLM's placeholder
-1). An all-greedy batch goes to vLLM's own forward unchanged: there vLLM's
path is exact and faster than padding rows for our `verify_greedy`. A batch
with random rows (all random, or mixed with greedy ones) runs our forward:
vLLM's own logits processors, penalties, bonus-token sampler and logprobs
are reused as they are; what changes:

* temperature, top-k and top-p of the drafted positions are applied with a
  per-token expansion in PyTorch. vLLM 0.32.0's CPU backend expands them with
  a fallback of its `expand_kernel` that writes into an int64 copy of the
  output and drops it (docs/engines.md, "vLLM": the sampling bias);
* acceptance runs in our kernels: ragged rows are padded to `max_spec_len`
  with `draft_lens`; the bonus position of a fully drafted row holds a one-hot
  at vLLM's bonus token, so the kernel emits exactly the token vLLM's sampler
  drew (with its top-k/top-p, penalties and per-request generator);
* a proposer without draft probabilities (`draft_probs=None`: n-gram,
  `custom_class`, greedy drafts) is a deterministic proposal: one-hot draft
  distributions, so acceptance is min(1, p(x)) and a rejection resamples from
  p without x, as in vLLM;
* randomness: our kernels' Philox streams. Rows without a seed share one call
  keyed by a seed drawn from torch's global generator (vLLM seeds it from the
  engine's `seed`); a seeded request (`SamplingParams(seed=...)`) draws its key
  from its own generator, only in steps where it drafted (as vLLM does), so
  its output does not depend on the batch it runs in. Same distributions as
  vLLM, not the same random numbers.

Not supported (a clear error): vLLM's synthetic acceptance mode
(`rejection_sample_method="synthetic"`), and Model Runner V2
(`use_v2_model_runner`: its runner builds its own sampler in `load_model`;
`VLLM_USE_V2_MODEL_RUNNER=0` selects V1). Under pipeline parallelism V1 builds
the sampler on the last rank only; the other ranks are left as they are.
A negative draft id (vLLM's padding of some proposers) ends that row's draft:
the position takes the target's token (argmax, or a sample of the target
distribution), as vLLM does without draft probabilities.

`rejection_sample(...)` is the kernel-level function with the semantics of
vLLM's `vllm.v1.sample.rejection_sampler.rejection_sample` (same ragged
layout, same output), usable without vLLM; its signature differs: no
`cu_num_draft_tokens`, and `is_greedy` and `generators` in place of vLLM's
SamplingMetadata. This module imports vLLM only when its vLLM classes are first used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral

import torch

__all__ = ["rejection_sample", "apply_sampling_constraints", "LayerSkipRejectionSampler", "LayerSkipWorker",
           "WORKER_CLS", "PLACEHOLDER_TOKEN_ID"]

_MODULE = "layerskip_kernels.integrations.vllm_rejection"
WORKER_CLS = f"{_MODULE}.LayerSkipWorker"  # for LLM(worker_cls=...) / --worker-cls
PLACEHOLDER_TOKEN_ID = -1  # vLLM's rejected-position id (rejection_sampler.PLACEHOLDER_TOKEN_ID)
MAX_SPEC_LEN = 128  # vLLM's bound on drafts per request and step


def rejection_sample(
    draft_token_ids: torch.Tensor,  # int [N], N = sum(num_draft_tokens): the rows' drafts back to back
    num_draft_tokens: Sequence[int],  # [B] drafts per row (0 allowed)
    draft_probs: torch.Tensor | None,  # fp32 [N, V], or None: a deterministic proposal
    target_logits: torch.Tensor,  # [N, V] of the drafted positions, temperature/top-k/top-p applied
    bonus_token_ids: torch.Tensor,  # int [B] or [B, 1]: the token after a fully accepted row
    is_greedy: torch.Tensor | None = None,  # bool [B], or None: every row greedy
    generators: Mapping[int, torch.Generator] | None = None,  # row -> generator of a seeded request
    max_spec_len: int | None = None,  # output width - 1; default max(num_draft_tokens)
) -> torch.Tensor:
    """Greedy and random rejection sampling over vLLM's ragged layout.

    Row b drafted draft_token_ids[s_b : s_b + n_b] (s_b = n_0 + ... + n_{b-1})
    and target_logits[s_b + j] scores position j of it. Greedy rows accept the
    longest prefix equal to the target's argmax, then the argmax at the first
    mismatch; random rows accept draft x with probability min(1, p(x) / q(x))
    (q one-hot without draft_probs), then sample normalize(max(p - q, 0)).
    A fully accepted row ends with its bonus token.

    Returns:
        int32 [B, max_spec_len + 1]: row b's emitted tokens, then -1.

    Example:
        >>> logits = torch.zeros(3, 5); logits[[0, 1, 2], [2, 4, 1]] = 1
        >>> rejection_sample(torch.tensor([2, 4, 1]), [2, 0, 1], None, logits, torch.tensor([3, 0, 4]))
        tensor([[ 2,  4,  3],
                [ 0, -1, -1],
                [ 1,  4, -1]], dtype=torch.int32)
    """
    from .. import ops

    B, N, V, K, lens, num_draft_tokens = _check(draft_token_ids, num_draft_tokens, draft_probs, target_logits,
                                                bonus_token_ids, is_greedy, generators, max_spec_len)
    device = target_logits.device
    n = torch.as_tensor(num_draft_tokens, dtype=torch.long)  # [B], host
    bonus = bonus_token_ids.reshape(B).to(device=device, dtype=torch.long)
    out = torch.full((B, K + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32, device=device)
    # A row without drafts emits its bonus token; it uses no kernel and no randomness.
    empty = (n == 0).nonzero().flatten()
    out[empty.to(device), 0] = bonus[empty.to(device)].to(torch.int32)
    greedy = torch.ones(B, dtype=torch.bool) if is_greedy is None else is_greedy.cpu()
    greedy_rows = ((n > 0) & greedy).nonzero().flatten()
    random_rows = ((n > 0) & ~greedy).nonzero().flatten()
    if greedy_rows.numel():
        layout = _layout(greedy_rows, n, device)
        drafts, lens_g, logits = _pad(greedy_rows, layout, n, lens, draft_token_ids, target_logits, bonus, K)
        _, toks = ops.verify_greedy(drafts, logits, lens_g)
        out[greedy_rows.to(device)] = toks.to(torch.int32)
    if random_rows.numel():
        generators = generators or {}
        probs = target_logits.softmax(dim=-1, dtype=torch.float32)  # [N, V]
        seeded = [r for r in random_rows.tolist() if r in generators]
        groups = [[r] for r in seeded]
        unseeded = [r for r in random_rows.tolist() if r not in generators]
        if unseeded:
            groups.append(unseeded)
        for rows in groups:
            rows_t = torch.tensor(rows, dtype=torch.long)
            layout = _layout(rows_t, n, device)
            drafts, lens_r, target = _pad(rows_t, layout, n, lens, draft_token_ids, probs, bonus, K)
            q = _pad_draft_probs(rows_t.numel(), layout, draft_token_ids, draft_probs, K, V)
            gen = generators.get(rows[0]) if len(rows) == 1 and rows[0] in generators else None
            # Philox key: from the request's own generator, or torch's global one.
            seed = int(torch.randint(-2**63, 2**63 - 1, (), generator=gen,
                                     device=gen.device if gen is not None else "cpu"))
            _, toks = ops.verify_sampling(drafts, q, target, seed, 0, lens_r)
            out[rows_t.to(device)] = toks.to(torch.int32)
    return out


def _layout(rows: torch.Tensor, n: torch.Tensor, device):
    """For the drafted positions of `rows` (int64 [R], host) with n drafts per
    request (int64 [B], host): (row in rows, position in the row, index in the
    ragged layout), each int64 [T] on `device`."""
    n_r = n[rows]
    row_of = torch.repeat_interleave(torch.arange(rows.numel()), n_r)  # [T]
    pos = torch.arange(int(n_r.sum())) - torch.repeat_interleave(torch.cumsum(n_r, 0) - n_r, n_r)  # [T]
    src = (torch.cumsum(n, 0) - n)[rows][row_of] + pos  # [T]
    return row_of.to(device), pos.to(device), src.to(device)


def _pad(rows, layout, n, lens, draft_token_ids, per_token, bonus, K):
    """The kernels' padded inputs for `rows` (their _layout): drafts int64 [R, K] (0 past a
    row's drafts), draft_lens int32 [R], and per_token's rows as [R, K + 1, V]
    (position j of row r is per_token[s_r + j]); the bonus position n_r of a
    fully drafted row holds a one-hot at its bonus token (logits or
    probabilities: either way the kernel emits exactly that token)."""
    device = per_token.device
    row_of, pos, src = layout
    drafts = torch.zeros(rows.numel(), K, dtype=torch.long, device=device)  # [R, K]
    drafts[row_of, pos] = draft_token_ids[src].long().clamp(min=0)
    padded = torch.zeros(rows.numel(), K + 1, per_token.shape[-1], dtype=per_token.dtype, device=device)
    padded[row_of, pos] = per_token[src]  # [R, K + 1, V]
    n_r, lens_r = n[rows], lens[rows]
    full = (lens_r == n_r).nonzero().flatten()
    padded[full.to(device), n_r[full].to(device), bonus[rows[full].to(device)]] = 1
    return drafts, lens_r.to(device=device, dtype=torch.int32), padded


def _pad_draft_probs(R, layout, draft_token_ids, draft_probs, K, V):
    """Draft distributions fp32 [R, K, V] of R rows (their _layout):
    draft_probs' rows, or one-hot at the drafted tokens (a deterministic
    proposal)."""
    row_of, pos, src = layout
    q = torch.zeros(R, K, V, dtype=torch.float32, device=draft_token_ids.device)
    if draft_probs is not None:
        q[row_of, pos] = draft_probs[src]
    else:
        q[row_of, pos, draft_token_ids[src].long().clamp(min=0)] = 1.0
    return q


def _check(draft_token_ids, num_draft_tokens, draft_probs, target_logits, bonus_token_ids, is_greedy, generators,
           max_spec_len):
    """Boundary checks (each error names the argument); returns (B, N, V, K,
    lens, num_draft_tokens): lens int64 [B] on the host, each row's draft
    length up to its first negative (padding) draft id; num_draft_tokens as
    Python ints."""
    if not isinstance(num_draft_tokens, Sequence) or isinstance(num_draft_tokens, (str, bytes)) or \
            not all(isinstance(x, Integral) and not isinstance(x, bool) and x >= 0 for x in num_draft_tokens):
        raise ValueError(f"num_draft_tokens must be a list of ints >= 0 (drafts per request), got {num_draft_tokens!r}")
    num_draft_tokens = [int(x) for x in num_draft_tokens]
    B, N = len(num_draft_tokens), sum(num_draft_tokens)
    if B == 0:
        raise ValueError("num_draft_tokens must name at least one request, got []")
    K = max(num_draft_tokens) if max_spec_len is None else max_spec_len
    if isinstance(K, bool) or not isinstance(K, int) or not max(num_draft_tokens) <= K <= MAX_SPEC_LEN:
        raise ValueError(f"max_spec_len must be an int in [max(num_draft_tokens) = {max(num_draft_tokens)}, "
                         f"{MAX_SPEC_LEN}], got {K!r}")
    for name, t in (("draft_token_ids", draft_token_ids), ("target_logits", target_logits),
                    ("bonus_token_ids", bonus_token_ids)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if target_logits.dim() != 2 or target_logits.shape[0] != N or not target_logits.is_floating_point():
        raise ValueError(f"target_logits must be float [num_tokens = {N}, V], got {target_logits.dtype} "
                         f"{tuple(target_logits.shape)}")
    V, device = target_logits.shape[1], target_logits.device
    if V == 0:
        raise ValueError("target_logits must have a vocabulary (V > 0), got V = 0")
    if draft_token_ids.shape != (N,) or draft_token_ids.is_floating_point() or draft_token_ids.dtype == torch.bool:
        raise ValueError(f"draft_token_ids must be int [sum(num_draft_tokens) = {N}], got {draft_token_ids.dtype} "
                         f"{tuple(draft_token_ids.shape)}")
    if bonus_token_ids.shape not in ((B,), (B, 1)) or bonus_token_ids.is_floating_point() or \
            bonus_token_ids.dtype == torch.bool:
        raise ValueError(f"bonus_token_ids must be int [B = {B}] or [B, 1], got {bonus_token_ids.dtype} "
                         f"{tuple(bonus_token_ids.shape)}")
    if draft_probs is not None:
        if not isinstance(draft_probs, torch.Tensor) or draft_probs.shape != (N, V) or \
                draft_probs.dtype != torch.float32:
            got = f"{draft_probs.dtype} {tuple(draft_probs.shape)}" if isinstance(draft_probs, torch.Tensor) \
                else type(draft_probs).__name__
            raise ValueError(f"draft_probs must be None or float32 [num_tokens = {N}, V = {V}], got {got}")
    if is_greedy is not None and (not isinstance(is_greedy, torch.Tensor) or is_greedy.shape != (B,) or
                                  is_greedy.dtype != torch.bool):
        got = f"{is_greedy.dtype} {tuple(is_greedy.shape)}" if isinstance(is_greedy, torch.Tensor) \
            else type(is_greedy).__name__
        raise ValueError(f"is_greedy must be None (all greedy) or bool [B = {B}], got {got}")
    for name, t in (("draft_token_ids", draft_token_ids), ("bonus_token_ids", bonus_token_ids),
                    ("draft_probs", draft_probs), ("is_greedy", is_greedy)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} must be on target_logits' device {device}, got {t.device}")
    if generators is not None and not isinstance(generators, Mapping):
        raise ValueError(f"generators must be None or a Mapping of request index to torch.Generator, got "
                         f"{type(generators).__name__}")
    for r, g in (generators or {}).items():
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < B or not isinstance(g, torch.Generator):
            raise ValueError(f"generators must map request indices in [0, {B}) to torch.Generator, got {r!r}: {g!r}")
    # Values: host reads of the draft and bonus ids (rejection_sample reads
    # is_greedy too); vLLM reads its output on the host right after anyway.
    ids = draft_token_ids.cpu().long()
    if (ids >= V).any():
        raise ValueError(f"draft_token_ids must be < vocab size {V} (negative ids end a draft), got "
                         f"{int(ids.max())}")
    bon = bonus_token_ids.reshape(B).cpu().long()
    if ((bon < 0) | (bon >= V)).any():
        raise ValueError(f"bonus_token_ids must be in [0, {V}), got {bon.tolist()}")
    n = torch.as_tensor(list(num_draft_tokens), dtype=torch.long)
    row_of, pos, _ = _layout(torch.arange(B), n, "cpu")
    lens = n.clone()
    neg = ids < 0
    if neg.any():
        lens.scatter_reduce_(0, row_of[neg], pos[neg], reduce="amin")
    return B, N, V, K, lens, num_draft_tokens


# --------------------------------------------------------------------------- inside vLLM


def apply_sampling_constraints(logits: torch.Tensor, num_draft_tokens: Sequence[int], sampling_metadata):
    """Temperature, top-k and top-p of vLLM's SamplingMetadata on the drafted
    positions' logits [N, V] (in place where possible), as vLLM's function of
    that name, with the per-request values expanded to positions by
    repeat_interleave (vLLM 0.32.0's CPU fallback of that expansion loses its
    result). Greedy rows keep temperature 1."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    if logits.dim() != 2 or logits.shape[0] != sum(num_draft_tokens):
        raise ValueError(f"logits must be [sum(num_draft_tokens) = {sum(num_draft_tokens)}, V], got "
                         f"{tuple(logits.shape)}")
    if sampling_metadata.all_greedy:
        return logits
    n = torch.as_tensor(list(num_draft_tokens), dtype=torch.long, device=logits.device)

    def expand(x):  # [B] -> [N]
        return torch.repeat_interleave(x, n, output_size=logits.shape[0])

    temperature = sampling_metadata.temperature
    temperature = torch.where(temperature == 0, torch.ones_like(temperature), temperature)
    logits.div_(expand(temperature).unsqueeze(-1).to(logits.dtype))
    top_k = None if sampling_metadata.top_k is None else expand(sampling_metadata.top_k)
    top_p = None if sampling_metadata.top_p is None else expand(sampling_metadata.top_p)
    return apply_top_k_top_p(logits, top_k, top_p)


def _sampler_class():
    from dataclasses import replace

    import vllm
    from vllm.v1.outputs import SamplerOutput
    from vllm.v1.sample.rejection_sampler import MAX_SPEC_LEN as VLLM_MAX_SPEC_LEN, RejectionSampler

    from .vllm import TESTED_VLLM_VERSIONS

    # forward below copies vLLM 0.32's RejectionSampler.forward: another vLLM
    # may lay out its metadata or logprobs differently.
    version = vllm.__version__.split("+")[0]
    if version not in TESTED_VLLM_VERSIONS and not version.startswith("0.32."):
        raise RuntimeError(f"LayerSkipRejectionSampler follows vLLM 0.32's RejectionSampler.forward (tested: "
                           f"{', '.join(TESTED_VLLM_VERSIONS)}); running vLLM {vllm.__version__}: drop worker_cls "
                           "to use vLLM's own sampler")
    if VLLM_MAX_SPEC_LEN != MAX_SPEC_LEN:
        raise RuntimeError(f"LayerSkipRejectionSampler bounds drafts at {MAX_SPEC_LEN}; vLLM {vllm.__version__} "
                           f"at {VLLM_MAX_SPEC_LEN}")

    class LayerSkipRejectionSampler(RejectionSampler):
        """vLLM's RejectionSampler with acceptance in layerskip_kernels' ops
        (module docstring). Same constructor and forward."""

        def __init__(self, sampler, spec_config=None, device=None):
            if spec_config is not None and spec_config.rejection_sample_method == "synthetic":
                raise ValueError("LayerSkipRejectionSampler: speculative_config rejection_sample_method='synthetic' "
                                 "is not supported (use vLLM's own sampler for synthetic acceptance)")
            super().__init__(sampler, spec_config, device)

        @staticmethod
        def uses_vllms_path(sampling_metadata) -> bool:
            """Whether forward hands this batch to vLLM's RejectionSampler.forward:
            all-greedy batches. There vLLM's path is exact (it applies no
            temperature) and faster (one argmax and one small kernel, where ours
            pads the rows' logits for verify_greedy); ours pays off, and is
            needed for exactness on CPU, once a batch has random rows."""
            return sampling_metadata.all_greedy

        def forward(self, metadata, draft_probs, logits, sampling_metadata) -> SamplerOutput:
            if self.uses_vllms_path(sampling_metadata):
                return super().forward(metadata, draft_probs, logits, sampling_metadata)
            # vLLM's forward (0.32.0) with its sampling constraints and
            # rejection_sample replaced; the bonus sampler, logits processors
            # and logprobs are vLLM's.
            bonus_logits = logits[metadata.bonus_logits_indices]
            bonus_out = self.sampler(
                logits=bonus_logits, sampling_metadata=replace(sampling_metadata, max_num_logprobs=-1),
                predict_bonus_token=True,
                logprobs_mode_override="processed_logits" if self.is_processed_logprobs_mode else "raw_logits")
            raw_target_logits = logits[metadata.target_logits_indices].to(torch.float32)
            target_logits = raw_target_logits if self.is_processed_logprobs_mode else raw_target_logits.clone()
            target_logits = self.apply_logits_processors(target_logits, sampling_metadata, metadata)
            target_logits = apply_sampling_constraints(target_logits, metadata.num_draft_tokens, sampling_metadata)
            is_greedy = sampling_metadata.temperature == 0  # [B]; all-greedy batches went to vLLM's path
            output_token_ids = rejection_sample(
                metadata.draft_token_ids, metadata.num_draft_tokens, draft_probs, target_logits,
                bonus_out.sampled_token_ids, is_greedy, sampling_metadata.generators, metadata.max_spec_len)
            logprobs_tensors = None
            if sampling_metadata.max_num_logprobs is not None:
                logprobs_tensors = self._get_logprobs_tensors(
                    sampling_metadata.max_num_logprobs, metadata, logits,
                    target_logits if self.is_processed_logprobs_mode else raw_target_logits,
                    bonus_out.logprobs_tensors.logprobs, output_token_ids)
            return SamplerOutput(sampled_token_ids=output_token_ids, logprobs_tensors=logprobs_tensors)

    LayerSkipRejectionSampler.__module__ = _MODULE
    return LayerSkipRejectionSampler


def _worker_class():
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        from vllm.v1.worker.cpu_worker import CPUWorker as Base
    elif current_platform.is_cuda_alike():
        from vllm.v1.worker.gpu_worker import Worker as Base
    else:  # XPU and out-of-tree platforms have their own workers
        raise ValueError(f"{WORKER_CLS} subclasses vLLM's CPU or CUDA/ROCm worker; this platform is "
                         f"{type(current_platform).__name__} ({current_platform.device_name!r}): drop worker_cls "
                         "to use vLLM's own worker and rejection sampler")
    sampler_cls = __getattr__("LayerSkipRejectionSampler")

    class LayerSkipWorker(Base):
        """The platform's vLLM worker; its model runner verifies drafts with
        LayerSkipRejectionSampler."""

        def init_device(self):
            super().init_device()
            _swap_rejection_sampler(self, sampler_cls)

    LayerSkipWorker.__module__ = _MODULE
    return LayerSkipWorker


def _swap_rejection_sampler(worker, sampler_cls) -> None:
    """Gives `worker`'s V1 model runner a `sampler_cls` in place of vLLM's
    RejectionSampler. Model Runner V2 is refused: its runner holds a
    `rejection_sampler` of another class, None until `load_model`, which would
    then build its own over ours."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    spec_config = worker.vllm_config.speculative_config
    if spec_config is None:
        return  # no speculation, no rejection sampler
    if getattr(worker, "use_v2_model_runner", False):
        raise ValueError(f"{WORKER_CLS} replaces the V1 model runner's rejection sampler and does not support "
                         "Model Runner V2: set VLLM_USE_V2_MODEL_RUNNER=0, or drop worker_cls (--worker-cls) "
                         "to use vLLM's own sampler")
    runner = worker.model_runner
    sampler = getattr(runner, "rejection_sampler", None)
    if sampler is None or isinstance(sampler, sampler_cls):
        return  # V1 builds it on the last pipeline rank only; the others sample nothing
    if type(sampler) is not RejectionSampler:
        raise ValueError(f"{WORKER_CLS} replaces vLLM's RejectionSampler; {type(runner).__name__}."
                         f"rejection_sampler is a {type(sampler).__name__} (drop worker_cls to keep it)")
    runner.rejection_sampler = sampler_cls(runner.sampler, spec_config, runner.device)


_LAZY: dict[str, type] = {}
_MAKERS = {"LayerSkipRejectionSampler": _sampler_class, "LayerSkipWorker": _worker_class}


def __getattr__(name: str):
    # vLLM classes, made on first use so that importing this module needs no vLLM.
    if name not in _MAKERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _LAZY:
        _LAZY[name] = _MAKERS[name]()
    return _LAZY[name]
