"""Fixtures of the gateway tests: tiny random monitors and generators over SmolLM2's real tokenizer (servers and
expectations are in ``tests/serve/gateway/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.tiny_checkpoints import build_tiny_generator, build_tiny_scm


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from model.assets import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    return AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="session")
def tiny_scm_dir(tmp_path_factory, smol_dir) -> Path:
    return build_tiny_scm(tmp_path_factory.mktemp("gateway-scm"), smol_dir, seed=3, max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory, smol_dir) -> Path:
    return build_tiny_generator(tmp_path_factory.mktemp("gateway-generator"), smol_dir, seed=0, varied=True)


@pytest.fixture(scope="session")
def tiny_generator(tiny_generator_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_generator_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_generator_dir)
