"""Which layer of SmolLM2-135M-Instruct the shipped SAE reads: how well selection separates
biology from other text at each candidate layer.

For every SAE given (one per layer, trained by ``dsg train-sae`` on the same WordNet text with
the same options), the
selection stage runs on biology glosses (the forget side: WordNet's noun.body, noun.animal and
noun.plant) against glosses of other subjects (the retain side), with dsg's defaults (ratio
percentile 95, forget percentile 5, threshold at the 95th percentile of the retain rows' hit
rates). The guardrail's gate is then measured on held-out documents of both sides: the share of
held-out biology rows it fires on (it should be high), the share of held-out retain rows
(calibration aims at 5%), and the AUC of the rows' hit rates, for each guardrail size n.

    python benchmarks/smollm2_layer_choice.py --wordnet WORDNET_DIR --out RUN \
        --sae dsg-runs/train-sae/KEY3 --sae dsg-runs/train-sae/KEY7 ...

It prints one table (Markdown) and writes it with the numbers as JSON to RUN/layer-choice.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dsg_smollm2.subjects import held_out_split, subject_documents

N_FEATURES = (20, 50, 100)
TRAIN_ROWS = 512
TEST_ROWS = 256


def write_corpora(wordnet: Path, out: Path) -> dict[str, Path]:
    """The four corpora (forget/retain, train/test) as JSONL files in ``out``."""
    paths = {}
    for side, docs in subject_documents(wordnet).items():
        train, test = held_out_split(docs)
        for part, part_docs in (("train", train), ("test", test)):
            path = out / f"{side}-{part}.jsonl"
            path.write_text("".join(json.dumps({"text": d}) + "\n" for d in part_docs))
            paths[f"{side}-{part}"] = path
    return paths


def open_session(sae: Path, forget: Path, retain: Path, rows: int, out: Path) -> Any:
    """A session on the two corpora with dsg's default selection settings."""
    from dsg.engine.session import Session

    cli = {
        "model": "smollm2-135m-instruct",
        "sae": str(sae),
        "forget_corpus": forget,
        "retain_corpus": retain,
        "seq_len": 128,
        "dataset_size": rows,
        "n_features": N_FEATURES,
        "ratio_percentiles": (95.0,),  # dsg's defaults, not the organism case's
        "forget_percentile": 5.0,
        "calibration_percentile": 95.0,
        "batch_size": 16,
        "out": out,
    }
    return Session.open(cli)


def auc(positive: Any, negative: Any) -> float:
    """P(a positive's rate > a negative's), ties counted half."""
    import torch

    greater = (positive[:, None] > negative[None, :]).to(torch.float64).mean()
    ties = (positive[:, None] == negative[None, :]).to(torch.float64).mean()
    return float(greater + ties / 2)


def measure(sae: Path, corpora: dict[str, Path], out: Path) -> dict[str, Any]:
    from dsg.stages import select, sparsity
    from dsg_runtime.guardrail import rate_gate

    session = open_session(sae, corpora["forget-train"], corpora["retain-train"], TRAIN_ROWS, out)
    (selection,) = select.ensure(session)  # the statistics first, then the selection
    test = sparsity.ensure(
        open_session(sae, corpora["forget-test"], corpora["retain-test"], TEST_ROWS, out)
    )
    held_out = json.loads((sae / "metrics.json").read_text())["held_out"]
    result: dict[str, Any] = {
        "hook": session.sae().hook_name,
        "selected": selection.features.numel(),
        "sae_fvu": held_out["fvu"],
        "sae_loss_increase": held_out["loss_increase"],
    }
    for n in N_FEATURES:
        features = selection.top(n)
        rates = {
            side: test.token_hits(features, side).sum(dim=1).double() / test.seq_len
            for side in ("forget", "retain")
        }
        threshold = selection.thresholds[n]
        result[str(n)] = {
            "threshold": threshold,
            "fires_forget": float(rate_gate(rates["forget"], threshold).double().mean()),
            "fires_retain": float(rate_gate(rates["retain"], threshold).double().mean()),
            "auc": auc(rates["forget"], rates["retain"]),
        }
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| hook | SAE FVU | SAE loss + | selected | n | fires on held-out biology "
        "| fires on held-out retain | AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for n in N_FEATURES:
            m = r[str(n)]
            lines.append(
                f"| `{r['hook']}` | {r['sae_fvu']:.3f} | {r['sae_loss_increase']:.2f} | "
                f"{r['selected']} | {n} | {m['fires_forget']:.1%} | "
                f"{m['fires_retain']:.1%} | {m['auc']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, required=True)
    parser.add_argument("--sae", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    corpora = write_corpora(args.wordnet, args.out)
    results = [measure(sae, corpora, args.out) for sae in args.sae]
    text = table(results)
    print(text)
    (args.out / "layer-choice.json").write_text(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
