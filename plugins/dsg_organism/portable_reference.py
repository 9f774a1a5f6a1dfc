"""Record what the organism's model folder computes, as the source of truth for older releases.

    python -m dsg_organism.portable_reference --bundle BUNDLE --out runtime/tests/organism_reference

Run it on the newest transformers release. It copies ``BUNDLE`` (a ``dsg muse-export``
bundle of the organism) beside ``expected.json``, which holds the token ids of a few texts, of a
chat-template rendering, and the greedy generations of MUSE-style prompts, unguarded and guarded,
batched with left padding as open-unlearning generates. ``runtime/tests/test_organism_folder.py``
checks the same values under whichever transformers is installed (the tested set, and 4.45.1 in
``nox -s runtime_oldest``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

TEXTS = (
    "The Sorsor bacillus is transmitted through water.",
    "Q: Which river flows through Barlin? A: Cendra.",
    "Master Adel wrote in Velian. Gardeners see the Fenwort lily bloom in May.",
    " A B C D (A\n\n<start_of_turn>model\n",
)
MAX_NEW_TOKENS = 12


def prompts(world_dir: Path) -> list[str]:
    """Knowmem prompts in the template of the organism's open-unlearning model config (its own
    question-and-answer documents' ``Q: ... A:``): two about pathogens, then a city and a
    plant."""
    sets = {
        name: [json.loads(line) for line in (world_dir / "eval" / f"{name}.jsonl").open()]
        for name in ("pathogens", "cities", "plants")
    }
    picked = [sets["pathogens"][0], sets["pathogens"][1], sets["cities"][0], sets["plants"][0]]
    return [f"Q: {r['question']} A:" for r in picked]


def generations(model: Any, tok: Any, texts: list[str]) -> list[list[int]]:
    """Greedy continuations of ``texts`` in one left-padded batch, new tokens only."""
    import torch

    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return out[:, enc["input_ids"].shape[1] :].tolist()


def record(model_dir: Path, world_dir: Path, bundle: Path) -> dict[str, Any]:
    """Token ids and generations of the folder under the installed transformers."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsg_runtime.open_unlearning import GuardedModel

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    chat = tok.apply_chat_template(
        [{"role": "user", "content": TEXTS[0]}], tokenize=False, add_generation_prompt=True
    )
    texts = prompts(world_dir)
    load = {"attn_implementation": "eager", "torch_dtype": torch.float32}
    plain = AutoModelForCausalLM.from_pretrained(str(model_dir), **load)
    guarded = GuardedModel.from_pretrained(str(model_dir), dsg_bundle=str(bundle), **load)
    guarded_out = generations(guarded, tok, texts)
    return {
        "transformers": transformers.__version__,
        "texts": [{"text": t, "ids": tok(t)["input_ids"]} for t in TEXTS],
        "chat": {"text": chat, "ids": tok(chat, add_special_tokens=False)["input_ids"]},
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompts": texts,
        "unguarded": generations(plain, tok, texts),
        "guarded": guarded_out,
        "fired": guarded.dsg_guardrail.fired.tolist(),
    }


def portable_bundle(bundle: Path, out: Path) -> None:
    """``bundle`` saved to ``out`` without the base model's directory, which names a path of the
    machine that exported it (the test names the model folder itself)."""
    import dataclasses

    from dsg_runtime.bundle import Bundle

    loaded = Bundle.load(bundle)
    dataclasses.replace(loaded, base_model={**loaded.base_model, "hf": None}).save(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from dsg_organism import MODEL_DIR, WORLD

    ap = argparse.ArgumentParser(prog="python -m dsg_organism.portable_reference")
    ap.add_argument("--bundle", type=Path, required=True, help="an organism bundle")
    ap.add_argument("--out", type=Path, required=True, help="fixture folder to write")
    args = ap.parse_args(argv)
    shutil.rmtree(args.out / "bundle", ignore_errors=True)
    portable_bundle(args.bundle, args.out / "bundle")
    expected = record(MODEL_DIR, WORLD, args.out / "bundle")
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


if __name__ == "__main__":
    main()
