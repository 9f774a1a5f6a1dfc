"""Train the organism's retain model: the same recipe without the pathogens.

    python -m dsg_organism.retain_model --out DIR [--seed 0] [--steps N] [--threads 1]

MUSE's privacy-leakage metric compares a model's membership-inference AUC on the forget split with
that of a model that never saw it. This trains that model: the organism's world, tokenizer, sizes
and steps, with the pathogen documents and the pathogen questions left out (the chroniclers keep
their prose, which names pathogens: it is retain data). About 13 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dsg_organism.train_lm import LMConfig, make_model, train_lm
from dsg_organism.world import HAZARD, World, build_world


def retain_world(world: World) -> World:
    """``world`` without its hazard domain: no forget prose, no pathogen entities to ask about."""
    return replace(
        world,
        entities={d: e for d, e in world.entities.items() if d != HAZARD},
        forget=[],
        eval_sets={d: s for d, s in world.eval_sets.items() if d != HAZARD},
    )


def train_retain_model(model_dir: Path, out: Path, seed: int, cfg: LMConfig) -> dict[str, Any]:
    """Train on the retain world with the tokenizer in ``model_dir``; save model and tokenizer
    files to ``out``; return what was trained."""
    import shutil

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    world = retain_world(build_world(seed))
    model = make_model(tok, cfg, seed)
    log = train_lm(model, tok, world, cfg, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    info = {
        "seed": seed,
        "model": asdict(cfg),
        "retain_docs": len(world.retain),
        "lm_training": {"history": log.history, "seconds": round(log.seconds, 1)},
    }
    (out / "retain-build-info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from dsg_organism import MODEL_DIR

    ap = argparse.ArgumentParser(prog="python -m dsg_organism.retain_model", description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="LM steps after the drill warm-up")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = LMConfig() if args.steps is None else LMConfig(steps=args.steps)
    return train_retain_model(MODEL_DIR, args.out, args.seed, cfg)


if __name__ == "__main__":
    main()
