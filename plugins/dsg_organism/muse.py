"""The organism's MUSE data, in the layout open-unlearning's MUSE evaluation reads.

    python -m dsg_organism.muse --out plugins/dsg_organism/data/muse [--seed 0] [--holdout-seed 1]

MUSE's evaluation reads four configs of a Hugging Face dataset; this writes a local folder that
``datasets.load_dataset(folder, name=..., split=...)`` reads the same way (a ``README.md`` whose
YAML maps each config's splits to JSON Lines files):

- ``knowmem``: ``forget_qa`` (the pathogen questions, answered in free text: the correct option),
  ``retain_qa`` (the city, scholar and plant questions), and their few-shot ``*_icl`` splits
  (questions in the other wording about facts the evaluated splits do not ask);
- ``verbmem``: ``forget`` (one prose document per pathogen: its first two sentences as the
  prompt, the rest as the continuation to reproduce);
- ``privleak``: ``forget`` (pathogen documents the organism was trained on) and ``holdout``
  (pathogen documents of a world generated with another seed, never trained on).

The world is regenerated from its seed and checked against the shipped world files first, so
the data is the shipped organism's.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from dsg_organism.world import DOMAINS, HAZARD, INTROS, World, build_world

SPLITS = {
    "knowmem": ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"),
    "verbmem": ("forget",),
    "privleak": ("forget", "holdout"),
}
RETAIN_DOMAINS = ("cities", "scholars", "plants")
ICL_EXAMPLES = 3
PRIVLEAK_DOCS = 100
PROMPT_SENTENCES = 2


def qa(rows: list[dict]) -> list[dict]:
    """Multiple-choice rows as free-text questions: the answer is the correct option."""
    return [{"question": r["question"], "answer": r["choices"][r["answer"]]} for r in rows]


def icl(world: World, domains: tuple[str, ...], rng: random.Random) -> list[dict]:
    """Few-shot examples in the second wording of each attribute's question, so none repeats a
    question of the evaluated split."""
    rows = []
    for _ in range(ICL_EXAMPLES):
        domain = rng.choice(domains)
        entity = rng.choice(world.entities[domain])
        attr = rng.choice(list(DOMAINS[domain]))
        template = DOMAINS[domain][attr][2][1]
        question = template.format(e=entity.aliases[0] if entity.aliases else entity.name)
        rows.append({"question": question[0].upper() + question[1:], "answer": entity.facts[attr]})
    return rows


def sentences(doc: str) -> list[str]:
    return [s + "." for s in doc.removesuffix(".").split(". ")]


def verbatim(world: World) -> list[dict]:
    """For each pathogen, its first prose document in corpus order (not the Q&A one), split into
    a prompt and the continuation the model was trained to produce."""
    rows = []
    for entity in world.entities[HAZARD]:
        intros = {t.format(e=entity.name) for t in INTROS[HAZARD]}
        doc = next(d for d in world.forget if sentences(d)[0] in intros)
        parts = sentences(doc)
        rows.append(
            {
                "prompt": " ".join(parts[:PROMPT_SENTENCES]),
                "gt": " ".join(parts[PROMPT_SENTENCES:]),
            }
        )
    return rows


def muse_splits(world: World, holdout: World, seed: int) -> dict[str, dict[str, list[dict]]]:
    """Every split's rows."""
    rng = random.Random(seed)
    retain_rows = [r for d in RETAIN_DOMAINS for r in world.eval_sets[d]]
    return {
        "knowmem": {
            "forget_qa": qa(world.eval_sets[HAZARD]),
            "forget_qa_icl": icl(world, (HAZARD,), rng),
            "retain_qa": qa(retain_rows),
            "retain_qa_icl": icl(world, RETAIN_DOMAINS, rng),
        },
        "verbmem": {"forget": verbatim(world)},
        "privleak": {
            "forget": [{"text": t} for t in world.forget[:PRIVLEAK_DOCS]],
            "holdout": [{"text": t} for t in holdout.forget[:PRIVLEAK_DOCS]],
        },
    }


def readme() -> str:
    """The dataset card: YAML that maps each config's splits to files, as ``datasets`` reads."""
    lines = ["---", "configs:"]
    for config, splits in SPLITS.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {config}/{split}.jsonl"]
    lines += [
        "---",
        "",
        "MUSE-format evaluation data for dsg's model organism (a synthetic world: the pathogens",
        "are made up). Built by `python -m dsg_organism.muse`; see docs/open-unlearning.md.",
        "",
    ]
    return "\n".join(lines)


def write(splits: dict[str, dict[str, list[dict]]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for config, by_split in splits.items():
        (out / config).mkdir(exist_ok=True)
        for split, rows in by_split.items():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            (out / config / f"{split}.jsonl").write_text(text, encoding="utf-8")
    (out / "README.md").write_text(readme(), encoding="utf-8")


def check_shipped(world: World, world_dir: Path) -> None:
    """The regenerated world is the shipped one (same forget corpus and questions)."""
    shipped = [json.loads(line)["text"] for line in (world_dir / "forget.jsonl").open()]
    questions = [json.loads(line) for line in (world_dir / "eval" / f"{HAZARD}.jsonl").open()]
    if shipped != world.forget or questions != world.eval_sets[HAZARD]:
        raise RuntimeError(f"the world of this seed is not the one shipped in {world_dir}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    from dsg_organism import WORLD

    ap = argparse.ArgumentParser(prog="python -m dsg_organism.muse", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the organism's world seed")
    ap.add_argument("--holdout-seed", type=int, default=1, help="the unseen world's seed")
    args = ap.parse_args(argv)
    world = build_world(args.seed)
    if args.seed == 0:
        check_shipped(world, WORLD)
    splits = muse_splits(world, build_world(args.holdout_seed), args.seed)
    write(splits, args.out)
    return {c: {s: len(r) for s, r in by.items()} for c, by in splits.items()}


if __name__ == "__main__":
    main()
