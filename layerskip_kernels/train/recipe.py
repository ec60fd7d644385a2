"""The LayerSkip training recipe: layer dropout and the early-exit loss.

Elhoushi et al. 2024, "LayerSkip: Enabling Early Exit Inference and
Self-Speculative Decoding" (arXiv 2404.16710), section 4.1 (layer dropout) and
section 4.2 (early-exit loss). Layers are indexed l = 0 .. L-1, training steps
t = 0 .. T-1.

Layer dropout (4.1): layer l is skipped with probability

    p(l, t) = S(t) * D(l) * p_max
    D(l)    = exp(l * ln2 / (L - 1)) - 1        # 0 at the first layer, 1 at the last
    S(t)    = 1                                  # "constant" (continual pretraining, fine-tuning)
    S(t)    = exp(t * ln2 / (T - 1)) - 1         # "exp" curriculum (pretraining from scratch)

independently for every sample of the batch (a dropped layer is the identity
for that sample only).

Early-exit loss (4.2): every layer's output goes through the model's own final
norm and LM head, and the loss is

    J = sum_l  e~(t, l) * CE(head(x_{l+1}), y)
    e~(t, l) = C(t, l) e(l) / sum_i C(t, i) e(i)
    e(l)     = e_scale * sum_{i=0}^{l} i                    for l < L - 1
    e(L-1)   = (L - 1) + e_scale * sum_{i=0}^{L-2} i

so deeper layers weigh more, and the curriculum C(t, l) in {0, 1} decides which
layers contribute at step t:

- rotational(R): layer l is enabled when (l - t) mod R == 0, so each layer is
  supervised every R-th step and only ~L/R LM heads are computed per step;
- gradual: the enabled set grows from the last layer towards the first, one
  more layer every T_C / (L - 1) steps (here T_C = T/2, so every layer is
  enabled for the second half of training).

Our choices where the paper leaves room (stated here and in docs/training.md):
the last layer is always enabled by every curriculum, so the model never trains
a step without its final-output loss; and a sample never loses all of its
layers: D(0) = 0 already keeps layer 0, and `sample_layer_keep` also forces
layer 0 back for any sample whose draw dropped everything (only possible with
caller-supplied rates).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "CURRICULA",
    "DROPOUT_SCHEDULES",
    "depth_scale",
    "time_scale",
    "dropout_rates",
    "sample_layer_keep",
    "exit_scales",
    "EXIT_WEIGHTINGS",
    "curriculum_mask",
    "add_draft_exit",
    "loss_weights",
    "early_exit_loss",
]

CURRICULA = ("rotational", "gradual", "none")
DROPOUT_SCHEDULES = ("constant", "exp")


def depth_scale(num_layers: int) -> torch.Tensor:
    """D(l) = exp(l ln2 / (L-1)) - 1 for l = 0..L-1: fp64 [L], D(0) = 0, D(L-1) = 1."""
    if num_layers < 2:
        raise ValueError(f"layer dropout needs num_layers >= 2, got {num_layers}")
    l = torch.arange(num_layers, dtype=torch.float64)
    return torch.exp(l * math.log(2.0) / (num_layers - 1)) - 1.0


def time_scale(step: int, total_steps: int, schedule: str) -> float:
    """S(t): 1 for "constant"; exp(t ln2 / (T-1)) - 1 for "exp" (0 at t=0, 1 at t=T-1)."""
    if schedule == "constant":
        return 1.0
    if schedule != "exp":
        raise ValueError(f"dropout schedule must be one of {DROPOUT_SCHEDULES}, got {schedule!r}")
    if total_steps < 2:
        return 1.0
    t = min(max(step, 0), total_steps - 1)
    return math.exp(t * math.log(2.0) / (total_steps - 1)) - 1.0


def dropout_rates(num_layers: int, step: int, total_steps: int, p_max: float, schedule: str) -> torch.Tensor:
    """p(l, t) = S(t) D(l) p_max: fp32 [L]."""
    if not 0.0 <= p_max < 1.0:
        raise ValueError(f"p_max must be in [0, 1), got {p_max}")
    return (depth_scale(num_layers) * time_scale(step, total_steps, schedule) * p_max).float()


def sample_layer_keep(rates: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample keep mask, bool [L, B]: layer l is kept for sample b with
    probability 1 - rates[l]. A sample that drew no kept layer gets layer 0 back."""
    L = rates.shape[0]
    u = torch.rand(L, batch_size, generator=generator)
    keep = u >= rates.float()[:, None]
    keep[0] |= ~keep.any(dim=0)
    return keep


EXIT_WEIGHTINGS = ("paper", "flat")


def exit_scales(num_layers: int, e_scale: float, weighting: str = "paper") -> torch.Tensor:
    """e(l): fp64 [L], non-decreasing in depth; e(L-1) >= L-1 > 0.

    "paper": e(l) = e_scale * sum_{i<=l} i, the last layer (L-1) + e_scale * sum_{i<=L-2} i.
    "flat" (ours): e(l) = e_scale for every exit below the last, e(L-1) = L-1; the
    shallow exits a cheap draft needs (E <= L/4) weigh as much as the deep ones,
    where the paper's quadratic growth gives layer 2 of 12 a 3/55 share of layer 10's.
    """
    if e_scale < 0:
        raise ValueError(f"e_scale must be >= 0, got {e_scale}")
    if weighting not in EXIT_WEIGHTINGS:
        raise ValueError(f"exit weighting must be one of {EXIT_WEIGHTINGS}, got {weighting!r}")
    L = num_layers
    l = torch.arange(L, dtype=torch.float64)
    if weighting == "flat":
        e = torch.full((L,), float(e_scale), dtype=torch.float64)
        e[L - 1] = L - 1
        return e
    e = e_scale * l * (l + 1) / 2  # sum_{i=0}^{l} i
    e[L - 1] = (L - 1) + e_scale * (L - 2) * (L - 1) / 2
    return e


def curriculum_mask(num_layers: int, step: int, total_steps: int, curriculum: str, rotation: int = 2) -> torch.Tensor:
    """C(t, l): bool [L], the layers whose early-exit loss is on at step t.
    The last layer is always on."""
    L = num_layers
    l = torch.arange(L)
    if curriculum == "none":
        mask = torch.ones(L, dtype=torch.bool)
    elif curriculum == "rotational":
        if rotation < 1:
            raise ValueError(f"rotation (R) must be >= 1, got {rotation}")
        mask = (l - step) % rotation == 0
    elif curriculum == "gradual":
        t_c = max(total_steps // 2, 1)
        # number of layers (counted from the last) enabled at step t
        n = 1 + min(L - 1, (max(step, 0) * (L - 1)) // t_c)
        mask = l >= L - n
    else:
        raise ValueError(f"curriculum must be one of {CURRICULA}, got {curriculum!r}")
    mask[L - 1] = True
    return mask


def add_draft_exit(scales: torch.Tensor, mask: torch.Tensor, draft_exit: int, scale: float):
    """Ours: the exit a draft runs from (after layer `draft_exit`, 1 <= draft_exit < L)
    is supervised at every step with weight `scale`, whatever the curriculum says.
    Returns new (scales, mask); the inputs are not modified."""
    L = scales.shape[0]
    if not 1 <= draft_exit < L:
        raise ValueError(f"draft exit must be in [1, {L - 1}], got {draft_exit}")
    if not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"draft exit scale must be a finite number >= 0, got {scale}")
    scales, mask = scales.clone(), mask.clone()
    scales[draft_exit - 1] = scale
    mask[draft_exit - 1] = True
    return scales, mask


def loss_weights(scales: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e~(t, l) = C(t,l) e(l) / sum_i C(t,i) e(i): fp32 [L], sums to 1."""
    w = scales.double() * mask.double()
    total = w.sum()
    if total <= 0:
        raise ValueError("every enabled layer has a zero early-exit scale (the last layer must be enabled)")
    return (w / total).float()


def early_exit_loss(model, hidden: list[torch.Tensor], targets: torch.Tensor, weights: torch.Tensor,
                    distill: float = 0.0):
    """sum_l weights[l] * loss_l, loss_l = CE(model.exit_head(hidden[l]), targets).

    hidden: L tensors [B, T, H] (each layer's output); targets: int64 [B, T];
    weights: [L]. The LM head is computed only for layers with a non-zero
    weight: with a rotational curriculum that is where the recipe saves time.

    distill in [0, 1] (ours, not the paper's; 0 is the paper's loss): every exit
    below the last learns from the last layer too,
        loss_l = (1 - distill) CE(exit_l, y) + distill CE(exit_l, softmax(last).detach()),
    the second term being the KL divergence from the last layer's distribution
    up to a constant. A greedy draft is accepted when the exit's top-1 equals
    the last layer's, not the data's, so this trains the exit for agreement.

    Returns (loss, {layer: detached CE against the data}) for the layers computed.
    """
    if len(hidden) != weights.shape[0]:
        raise ValueError(f"got {len(hidden)} hidden states for {weights.shape[0]} weights")
    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill must be in [0, 1], got {distill}")
    L = len(hidden)
    w_list = weights.tolist()
    if distill > 0 and w_list[L - 1] == 0.0:
        raise ValueError("distillation needs the last layer's loss enabled")
    flat_targets = targets.reshape(-1)
    # Last layer first: its distribution is the teacher of the others.
    # Logits in fp32: the log-sum-exp over a bf16 vocab row loses too much.
    teacher = None
    total = None
    per_layer: dict[int, torch.Tensor] = {}
    for l in [L - 1] + list(range(L - 1)):
        w = w_list[l]
        if w == 0.0:
            continue
        logits = model.exit_head(hidden[l]).float()
        logits = logits.reshape(-1, logits.shape[-1])  # [B*T, V]
        ce = F.cross_entropy(logits, flat_targets)
        per_layer[l] = ce.detach()
        if l == L - 1:
            if distill > 0:
                teacher = torch.softmax(logits.detach(), dim=-1)
            term = ce
        elif distill > 0:
            term = (1.0 - distill) * ce + distill * F.cross_entropy(logits, teacher)
        else:
            term = ce
        total = w * term if total is None else total + w * term
    return total, per_layer
