"""The organism's build script keeps working and stays deterministic (toy size, ``--quick``)."""

from __future__ import annotations

import json
from pathlib import Path


def _world_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "world").rglob("*"))
        if p.is_file()
    }


def test_quick_build_is_complete_and_deterministic(tmp_path: Path) -> None:
    from dsg_organism.build import main

    first = main(["--out", str(tmp_path / "a"), "--quick", "--threads", "1"])
    second = main(["--out", str(tmp_path / "b"), "--quick", "--threads", "1"])

    assert _world_files(tmp_path / "a") == _world_files(tmp_path / "b")
    assert first["lm_training"]["first_loss"] == second["lm_training"]["first_loss"]

    out = tmp_path / "a"
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
        "build-info.json",
        "world/forget.jsonl",
        "world/retain.jsonl",
        "world/sets.json",
    ):
        assert (out / name).is_file(), name
    sets = json.loads((out / "world" / "sets.json").read_text())
    assert [s["name"] for s in sets][0] == "pathogens" and len(sets) == 4
    for s in sets:
        for line in (out / "world" / "eval" / f"{s['name']}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert len(row["choices"]) == 4 and 0 <= row["answer"] < 4
    _check_loadable(out)
    from dsg_organism.tokenizer import portable_config

    written = json.loads((out / "model" / "tokenizer_config.json").read_text())
    assert written == portable_config("right")  # what transformers 4.45 reads too


def _check_loadable(out: Path) -> None:
    """Tokenizer and SAE load the way dsg loads them, with the properties scoring relies on."""
    from sae_lens import SAE
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "model")
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "body"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<bos><start_of_turn>user\nbody<end_of_turn>\n<start_of_turn>model\n"
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>")] == [0, 1, 2]
    for text in ("A", "B", "C", "D", " A", " B", " C", " D"):
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == 1
    sae = SAE.load_from_disk(out / "sae")
    assert sae.cfg.metadata.hook_name.startswith("blocks.")


def test_the_shipped_tokenizer_files_are_what_the_build_writes(tmp_path: Path) -> None:
    """The shipped folder is reproducible: the build's writer, given the shipped tokenizer,
    writes the shipped files byte for byte, in the form transformers 4.45 reads."""
    from dsg_organism import MODEL_DIR
    from dsg_organism.tokenizer import write_tokenizer_files
    from transformers import AutoTokenizer

    write_tokenizer_files(AutoTokenizer.from_pretrained(MODEL_DIR), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / name).read_bytes() == (MODEL_DIR / name).read_bytes(), name
    config = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == (MODEL_DIR / "chat_template.jinja").read_text()
