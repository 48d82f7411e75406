"""A tiny planted world on disk (tokenizer, a 2-step pretrained 2-layer Llama, fine-tune JSONL), built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_papers.methods.grasp.planted.world import World, make_planted

TINY_WORLD = {"n_topics": 3, "n_questions": 6, "n_style": 8, "n_slots": 2, "n_finetune": 40}


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 training rows (5 batches of 8 per epoch), 6 validation rows, hidden size 16."""
    out = tmp_path_factory.mktemp("planted")
    make_planted(out, steps=2, world=World(**TINY_WORLD), hidden=16, layers=2)
    return out
