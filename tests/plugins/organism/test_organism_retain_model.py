"""The organism's retain model (the reference of MUSE's privacy-leakage metric) is trained
without the hazard domain, with the organism's tokenizer (toy sizes here)."""

from __future__ import annotations

from pathlib import Path


def test_the_retain_world_has_no_pathogen() -> None:
    from dsg_organism.retain_model import retain_world
    from dsg_organism.world import build_world

    world = build_world(0, n_entities=8, n_docs=2, n_target=8)
    retain = retain_world(world)
    assert retain.forget == [] and retain.retain == world.retain
    assert set(retain.entities) == {"cities", "scholars", "plants"}
    assert "pathogens" not in retain.eval_sets


def test_a_retain_model_is_saved_with_the_organisms_tokenizer(tmp_path: Path) -> None:
    from dsg_organism import MODEL_DIR
    from dsg_organism.retain_model import train_retain_model
    from dsg_organism.train_lm import LMConfig
    from transformers import AutoModelForCausalLM

    cfg = LMConfig(d_model=32, n_layers=2, n_heads=2, d_mlp=64, warmup_steps=1, steps=1)
    info = train_retain_model(MODEL_DIR, tmp_path, 0, cfg)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.vocab_size == 1410 and info["retain_docs"] == 720
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / name).read_bytes() == (MODEL_DIR / name).read_bytes()
