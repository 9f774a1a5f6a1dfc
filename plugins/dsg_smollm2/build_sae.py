"""Train the SAE shipped for SmolLM2-135M-Instruct, the way it was trained.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet
    python -m dsg_smollm2.build_sae --wordnet wordnet --out plugins/dsg_smollm2/data/sae

It writes every WordNet gloss (WordNet 3.0, all lexicographer files) as a corpus, runs ``dsg
train-sae`` on it with the options in :data:`OPTIONS` (its artifact lands in ``--runs``, so a
stopped build resumes), and stores the result in ``--out``: the weights in float16, the config,
the held-out metrics, the training curve and ``build-info.json`` (the options, the train-sae
artifact's key, which covers the text, the library versions and this command). It took 38
minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from dsg_smollm2.wordnet import documents

MODEL = "smollm2-135m-instruct"
OPTIONS: dict[str, Any] = {
    "sae_hook": "blocks.7.hook_resid_post",
    "sae_architecture": "topk",
    "sae_width": 4096,
    "sae_k": 32,
    "sae_tokens": 2_100_000,
    "sae_batch": 4096,
    "sae_lr": 1e-3,
    "sae_eval_tokens": 16384,
    "seq_len": 128,
    "seed": 0,
    "dtype": "float32",
}
"""The options of the shipped SAE (the hook was chosen by benchmarks/smollm2_layer_choice.py)."""
SHIPPED = ("cfg.json", "metrics.json", "training.png")


def write_corpus(wordnet: Path, path: Path) -> int:
    """Every gloss document, as JSONL; returns the number of documents."""
    docs = [doc for _, file_docs in sorted(documents(wordnet).items()) for doc in file_docs]
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs), encoding="utf-8")
    return len(docs)


def train(corpus: Path, runs: Path, batch_size: int) -> Path:
    """The ``dsg train-sae`` artifact for :data:`OPTIONS` (found, resumed or trained), run as the
    command a user would type, so its progress shows on the terminal."""
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in OPTIONS.items()]
    command = [
        "dsg", "train-sae", f"--model={MODEL}", f"--sae-corpus={corpus}", f"--out={runs}",
        f"--batch-size={batch_size}", *flags,
    ]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)
    return Path(done.stdout.strip().splitlines()[-1])


def ship(artifact: Path, out: Path, info: dict[str, Any]) -> None:
    """The artifact's SAE with float16 weights, its metrics and plot, and ``info``, written into a
    temporary folder beside ``out`` and renamed into place."""
    import torch
    from safetensors.torch import load_file, save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    weights = load_file(artifact / "sae_weights.safetensors")
    save_file(
        {name: value.to(torch.float16).contiguous() for name, value in weights.items()},
        staging / "sae_weights.safetensors",
    )
    for name in SHIPPED:
        shutil.copyfile(artifact / name, staging / name)
    (staging / "build-info.json").write_text(json.dumps(info, indent=1) + "\n")
    for path in (staging, *staging.iterdir()):  # mkdtemp's and save_file's modes are private
        path.chmod(0o755 if path.is_dir() else 0o644)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, required=True, help="extracted wordnet-base")
    parser.add_argument("--out", type=Path, required=True, help="where the SAE is stored")
    parser.add_argument("--runs", type=Path, default=Path("dsg-runs"), help="dsg's run folder")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    corpus = args.runs / "wordnet-glosses.jsonl"
    n_docs = write_corpus(args.wordnet, corpus)
    started = time.time()
    artifact = train(corpus, args.runs, args.batch_size)
    info = {
        "command": "python -m dsg_smollm2.build_sae --wordnet WORDNET --out OUT",
        "model": MODEL,
        "options": OPTIONS,
        "text": {"source": "WordNet 3.0 glosses (Debian wordnet-base)", "documents": n_docs},
        "artifact": json.loads((artifact / "meta.json").read_text())["key"],
        "versions": {
            name: metadata.version(name)
            for name in ("torch", "transformers", "transformer-lens", "sae-lens")
        },
        "python": sys.version.split()[0],
        "seconds": round(time.time() - started),
    }
    ship(artifact, args.out, info)
    print(args.out)


if __name__ == "__main__":
    main()
