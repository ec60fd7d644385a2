"""LayerSkip training recipe (layer dropout + early-exit loss) and the trainer.

    layerskip train --out runs/my-model --minutes 10      # or python -m layerskip_kernels.train.cli
    python -m layerskip_kernels.train.evaluate --models A B --out bench/results/early_exit_eval

See docs/training.md. Submodules: data (corpus, split, tokenizer), recipe
(schedules and losses), trainer (the loop, checkpoints, saving), evaluate, plot.
"""

from . import data, recipe

__all__ = ["data", "recipe"]
