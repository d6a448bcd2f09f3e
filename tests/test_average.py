"""`trainer average`: real runs' weights averaged into one model that exports as a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trainer.cli import app
from trainer.config import FitConfig
from trainer.export.average import AverageError, average_runs
from trainer.export.bundle import export_bundle
from trainer.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
SIZE = 32


def _fit(data: Path, out: Path, size: int = SIZE, seed: int = 0) -> Path:
    fit(FitConfig(data=str(data), out=str(out), arch="resnet_se", init="random", epochs=1, batch_size=8, size=size,
                  workers=0, seed=seed))
    return out


@pytest.fixture(scope="module")
def runs(face_dataset, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [_fit(face_dataset, root / f"seed-{seed}", seed=seed) for seed in (0, 1)]


def _weights(run: Path, checkpoint: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(run / f"{checkpoint}.pt", map_location="cpu", weights_only=True)["model"]


def test_averaged_weights_are_the_mean_and_export_records_their_runs(runs, tmp_path):
    config = average_runs(runs, tmp_path / "soup")
    soup, first, second = _weights(tmp_path / "soup"), _weights(runs[0]), _weights(runs[1])
    floats = [name for name, t in soup.items() if t.is_floating_point()]
    assert floats and any(not torch.equal(first[n], second[n]) for n in floats), "the seeds must differ"
    for name in floats:
        torch.testing.assert_close(soup[name], (first[name] + second[name]) / 2)
    for name in set(soup) - set(floats):  # batch-norm counters
        assert torch.equal(soup[name], first[name])
    for name in ("best", "final"):
        assert (tmp_path / "soup" / f"{name}.pt").samefile(tmp_path / "soup" / "last.pt")
    assert config["averaged"]["runs"] == [str(r) for r in runs]
    assert json.loads((tmp_path / "soup" / "config.json").read_text())["averaged"]["epochs"] == [1, 1]

    bundle = export_bundle([tmp_path / "soup"], tmp_path / "bundle", gradient_graphs=False)
    training = bundle.manifest["models"][0]["training"]
    assert training["averaged"]["runs"] == [str(r) for r in runs] and training["averaged"]["checkpoint"] == "last"


def test_averaging_refuses_what_is_not_one_model(runs, face_dataset, tmp_path):
    other = _fit(face_dataset, tmp_path / "other", size=48)
    with pytest.raises(AverageError, match=f"{other}: size 48 differs"):
        average_runs([runs[0], other], tmp_path / "a")
    with pytest.raises(AverageError, match="at least two runs"):
        average_runs(runs[:1], tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(AverageError, match="not empty"):
        average_runs(runs, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["keep.txt"]
    result = runner.invoke(app, ["average", str(runs[0]), str(tmp_path / "nothing"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "no such checkpoint" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()
    result = runner.invoke(app, ["average", *map(str, runs), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0 and "averaged into" in result.output and (tmp_path / "e" / "best.pt").is_file()


def test_the_manifest_names_training_data_relative_to_the_export_folder(runs, face_dataset, tmp_path_factory,
                                                                       tmp_path, monkeypatch):
    # fit stores absolute data paths (for --resume from anywhere); a published manifest gives them relative to
    # where export ran when they lie inside it, and leaves paths outside it as they are.
    average_runs(runs, tmp_path / "soup")
    root = tmp_path_factory.getbasetemp()
    monkeypatch.chdir(root)
    training = export_bundle([tmp_path / "soup"], tmp_path / "bundle", gradient_graphs=False).manifest["models"][0]["training"]
    expected = str(face_dataset.resolve().relative_to(root.resolve()))
    assert Path(json.loads((runs[0] / "config.json").read_text())["fit"]["data"]).is_absolute()
    assert training["data"] == training["validation_data"] == expected
    assert training["averaged"]["data"] == [expected, expected]
    monkeypatch.chdir(runs[0])  # the data lies outside: stored as fit wrote it
    outside = export_bundle([tmp_path / "soup"], tmp_path / "bundle2", gradient_graphs=False).manifest["models"][0]["training"]
    assert outside["data"] == str(face_dataset.resolve()) and Path(outside["data"]).is_absolute()
