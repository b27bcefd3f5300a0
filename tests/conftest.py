"""Shared fixtures: tiny seeded SD components, built once per test session, fully offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
if "PYTEST_XDIST_WORKER" in os.environ:
    # Under `pytest -n 2` on 2 cores: one thread per worker (and per process it starts); two workers of 2 threads
    # each oversubscribe the cores (measured: the suite took twice as long).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    from avert.testing.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory) -> Path:
    from avert.testing.tiny import build_tiny_sdxl_folder

    return build_tiny_sdxl_folder(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_sdxl_folder):
    from avert.models.loader import load_model

    return load_model(tiny_sdxl_folder)


@pytest.fixture(scope="session")
def tiny_v_folder(tmp_path_factory) -> Path:
    from avert.testing.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(tmp_path_factory.mktemp("tiny-v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    from avert.models.loader import load_model

    return load_model(tiny_folder)


@pytest.fixture(scope="session")
def diffusers_pipe(tiny_folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clear_caches() -> None:
    import importlib

    importlib.import_module("avert.prompts.schedule").schedule.cache_clear()
    importlib.import_module("avert.prompts.parse")._attention.cache_clear()
    importlib.import_module("avert.conditioning.chunks")._VOCABULARIES.clear()
    importlib.import_module("avert.conditioning.encode")._CACHES.clear()


@pytest.fixture(autouse=True, scope="session")
def _fresh_caches_per_session():
    """Memoised prompt parsing, token vocabularies and encoded texts start empty in every test session: mutation
    testing forks its runs from one process whose caches would otherwise answer for the code under test."""
    _clear_caches()


@pytest.fixture(autouse=True)
def _fresh_caches_per_test_under_mutmut():
    """Under mutmut (which sets MUTANT_UNDER_TEST), empty before every test: mutmut runs a mutant only against the
    tests that reached its function, and a cache filled by an earlier test would hide the function from later ones."""
    if "MUTANT_UNDER_TEST" in os.environ:
        _clear_caches()
