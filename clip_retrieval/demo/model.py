"""Building the bundled demo models: generated training pictures (seed 1000) and a small model trained on them.

Owns the recipe that made ``models/demo`` and ``models/demo-en`` (seed, architecture,
pictures per subject and scene); ``python -m scripts.build_demo_model`` runs it. Training
itself belongs to ``train``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..collection.generated import make_collection
from ..core.files import write_dir_atomic
from ..train import TrainResult, seed_everything, train

DEMO_SEED = 1000
DEMO_ARCH = "demo-small"


def build_demo_model(out: str | os.PathLike, workdir: str | os.PathLike, per_pair: int = 100, epochs: int = 12,
                     batch_size: int = 128, quiet: bool = False, english_only: bool = False) -> TrainResult:
    """Generate the training pictures (seed 1000, never the demo data's seed 0) and train the demo model.

    The best checkpoint is copied to ``out`` (the package's ``models/demo`` folder).
    ``english_only`` trains ``demo-en`` instead: English captions only, so the model reads no
    Chinese and a Chinese query reaches it only through the expansion table and dictionary.
    """
    seed_everything(DEMO_SEED)
    csv = make_collection(Path(workdir) / "data", per_pair=per_pair, seed=DEMO_SEED, english=True,
                          chinese=not english_only)
    result = train(csv, Path(workdir) / "run", arch=DEMO_ARCH, epochs=epochs, batch_size=batch_size,
                   seed=DEMO_SEED, quiet=quiet, val_fraction=0.05, languages=["en"] if english_only else None)
    write_dir_atomic(out, lambda tmp: shutil.copytree(result.best, tmp, dirs_exist_ok=True))
    return result
