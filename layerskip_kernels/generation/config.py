"""What to decode with: `SamplingParams` (per request) and `SpeculationConfig`
(per engine), with one `validate(model)` and one `from_model(...)` that reads
the defaults a model directory records.

    spec = SpeculationConfig.from_model(model_dir)      # the recorded defaults
    out = generate(model, prompts, **spec.generate_kwargs())

Recorded defaults (config.json `layerskip`, written by bench/ and finish steps;
generation_config.json for the decoding aids, as transformers reads it):

  exit_layer          layerskip.default_exit_layer (0 or absent: autoregressive);
                      with adaptive drafting layerskip.adaptive.exit_layer first
  num_speculations    layerskip.default_num_speculations, else 4; with adaptive
                      drafting layerskip.adaptive.num_speculations first
  speculation         layerskip.default_speculation, else "static"
  draft_vocab         layerskip.default_draft_vocab (0: the full vocabulary)
  draft_quantization  layerskip.default_draft_quantization, else None
  repetition_penalty, no_repeat_ngram_size   generation_config.json, else off

The CLI (`layerskip generate`) and every benchmark in bench/ read them here.
Values passed to from_model win over the record (None: use the record), and a
recorded value is checked only when it is used; a bad one raises ValueError
naming the file and key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace

import torch

from . import validation as v
from .policy import adaptive_settings
from .sampling import DecodingAids

__all__ = ["SamplingParams", "SpeculationConfig", "DEFAULT_NUM_SPECULATIONS", "recorded_aids"]

# generate()'s k, and the CLI's and the benchmarks' when the model records none.
DEFAULT_NUM_SPECULATIONS = 4


@dataclass
class SamplingParams:
    """One request's stopping and sampling settings (Engine.add / generate)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    eos_token_id: object = None  # None: the model config's; an id or a list of ids


@dataclass
class SpeculationConfig:
    """How an engine decodes: every request of it shares these.

    exit_layer None is plain autoregressive decoding; otherwise the draft runs
    layers [0, exit_layer) and at most num_speculations tokens per iteration.
    `speculation` is "static", "adaptive" or a drafting policy object
    (generation.policy); draft_vocab (token ids) and draft_quantization
    ("int8") choose the draft head (generation.draft_head); compile runs the
    steps compiled; repetition_penalty / no_repeat_ngram_size are the decoding
    aids; do_sample chooses sampling over greedy decoding for every request.
    """

    exit_layer: int | None = None
    num_speculations: int = DEFAULT_NUM_SPECULATIONS
    speculation: object = "static"
    draft_vocab: object = None
    draft_quantization: str | None = None
    compile: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    do_sample: bool = False
    # From from_model, for display: the adaptive settings used (threshold, per_row_k, bandit).
    adaptive: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def aids(self) -> DecodingAids:
        return DecodingAids(float(self.repetition_penalty), self.no_repeat_ngram_size)

    def validate(self, model) -> SpeculationConfig:
        """A normalised copy, every setting checked against the model (ValueError naming it)."""
        cfg = model.config
        exit_layer, k = v.check_drafting(self.exit_layer, self.num_speculations, cfg.num_hidden_layers)
        v.check_decoding_aids(self.repetition_penalty, self.no_repeat_ngram_size)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be a bool, got {self.compile!r}")
        return replace(self, exit_layer=exit_layer, num_speculations=k, do_sample=v.check_bool("do_sample", self.do_sample),
                       speculation=v.check_speculation(self.speculation),
                       draft_vocab=v.check_draft_vocab(self.draft_vocab, cfg.vocab_size),
                       draft_quantization=v.check_draft_quantization(self.draft_quantization))

    def generate_kwargs(self) -> dict:
        """These settings as keyword arguments of generate()."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "adaptive"}

    @classmethod
    def from_model(cls, source, model=None, *, drafting: bool = False, **given) -> SpeculationConfig:
        """The model's recorded defaults (module docstring), overridden by `given`
        values that are not None (exit_layer=0 means autoregressive).

        Args:
            source: the model directory, or a model (its config only: no
                generation_config.json or token frequencies are read then).
            model: the loaded model of that directory (saves reading config.json).
            drafting: with no exit layer recorded or given, draft from
                max(1, L // 4) instead of decoding autoregressively (benchmarks
                that compare both).
            given: exit_layer, num_speculations, speculation, draft_vocab (a
                number of most frequent tokens), draft_quantization ("none" is
                None), repetition_penalty, no_repeat_ngram_size, compile, do_sample.
        """
        path, cfg = _source(source, model)
        where = os.path.join(path, "config.json") if path else "config"
        rec = cfg.extra.get("layerskip", {})
        L = cfg.num_hidden_layers
        g = {key: val for key, val in given.items() if val is not None}
        unknown = set(g) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"from_model got unexpected settings {sorted(unknown)}")
        if "exit_layer" not in g and rec.get("default_exit_layer") is not None:
            v.check_int(f"{where}: layerskip.default_exit_layer", rec["default_exit_layer"], 0, L - 1)
        if "num_speculations" not in g and "default_num_speculations" in rec:
            v.check_int(f"{where}: layerskip.default_num_speculations", rec["default_num_speculations"], 1,
                        v.MAX_SPECULATIONS)
        speculation = g.get("speculation", rec.get("default_speculation", "static"))
        if isinstance(speculation, str) and speculation not in v.SPECULATION_MODES:
            raise ValueError(f"{where}: layerskip.default_speculation must be one of {v.SPECULATION_MODES}, "
                             f"got {speculation!r}")
        recorded_vocab = "draft_vocab" not in g
        vocab_size = v.check_int(f"{where}: layerskip.default_draft_vocab", rec.get("default_draft_vocab", 0), 0,
                                 cfg.vocab_size) if recorded_vocab else g["draft_vocab"]
        quant = g.get("draft_quantization")
        if "draft_quantization" not in g:
            recorded = rec.get("default_draft_quantization")
            try:
                quant = v.check_draft_quantization(recorded)
            except ValueError:
                raise ValueError(f"{where}: layerskip.default_draft_quantization must be null or \"int8\", "
                                 f"got {recorded!r}") from None
        elif quant == "none":
            quant = None
        adaptive = adaptive_settings(cfg, where) if speculation == "adaptive" else {}
        exit_layer = g.get("exit_layer")
        if exit_layer is None:  # adaptive drafting has its own recorded exit layer (the bandit's centre)
            exit_layer = adaptive.get("exit_layer", rec.get("default_exit_layer"))
        if exit_layer is None and drafting:
            exit_layer = max(1, L // 4)
        exit_layer = None if exit_layer == 0 else exit_layer
        k = g.get("num_speculations")
        if k is None:  # adaptive drafting has its own recorded k_max
            k = adaptive.get("num_speculations", rec.get("default_num_speculations", DEFAULT_NUM_SPECULATIONS))
        draft_ids = None
        if vocab_size and not (recorded_vocab and exit_layer is None):  # a recorded one only when drafting
            if path is None:
                raise ValueError("a reduced draft vocabulary needs the model directory (its token frequencies)")
            from ..vocab import frequent_tokens

            draft_ids = frequent_tokens(path, vocab_size, cfg.vocab_size)
        aids = recorded_aids(path) if path else {}
        return cls(exit_layer=exit_layer, num_speculations=k, speculation=speculation, draft_vocab=draft_ids,
                   draft_quantization=quant, compile=g.get("compile", False),
                   repetition_penalty=g.get("repetition_penalty", aids.get("repetition_penalty", 1.0)),
                   no_repeat_ngram_size=g.get("no_repeat_ngram_size", aids.get("no_repeat_ngram_size", 0)),
                   do_sample=g.get("do_sample", False), adaptive=adaptive)


def _source(source, model):
    """(model directory or None, LlamaConfig) of from_model's arguments."""
    from ..model.config import LlamaConfig
    from ..model.loading import model_file

    if isinstance(source, torch.nn.Module):
        return None, source.config
    if isinstance(source, LlamaConfig):
        return None, source
    path = os.fspath(source)
    if model is not None:
        return path, model.config
    return path, LlamaConfig.from_json(model_file(path, "config.json"))


def recorded_aids(path: str) -> dict:
    """The decoding aids the model directory recommends, as transformers reads
    them from generation_config.json: {"repetition_penalty", "no_repeat_ngram_size"}
    (absent keys are off). ValueError naming the file for a bad value."""
    from ..model.loading import model_file

    out = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    file = model_file(path, "generation_config.json")
    if not os.path.isfile(file):
        return out
    try:
        with open(file, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not a readable JSON file: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(cfg).__name__}")
    if cfg.get("repetition_penalty") is not None:
        out["repetition_penalty"] = v.check_repetition_penalty(cfg["repetition_penalty"],
                                                               f"{file}: repetition_penalty")
    if cfg.get("no_repeat_ngram_size") is not None:
        out["no_repeat_ngram_size"] = v.check_int(f"{file}: no_repeat_ngram_size", cfg["no_repeat_ngram_size"], 0)
    return out
