"""Shared fixtures: data the tests make themselves (never ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.synthetic import make_face_dataset, make_sample_media


@pytest.fixture(scope="session")
def face_dataset(tmp_path_factory) -> Path:
    """A tiny DIR/{train,validation,test}/{real,fake}/ dataset of 64 px astronaut crops."""
    root = tmp_path_factory.mktemp("dataset")
    make_face_dataset(root, {"train": 12, "validation": 4, "test": 4}, size=64)
    return root


@pytest.fixture(scope="session")
def sample_media(tmp_path_factory) -> dict[str, Path]:
    """Real and blended photos and clips, a photo without a face and a corrupt file."""
    folder = tmp_path_factory.mktemp("media")
    return {path.name: path for path in make_sample_media(folder)}
