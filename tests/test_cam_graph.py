"""Class activation maps for heads that are not global-pool + linear: Grad-CAM traced into the
ONNX graph (trainer.export.cam_graph), exported into bundles, and used by forensic's heatmaps."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainer.export.cam_graph import reference_cam
from trainer.models import DetectorWithCAM, create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32


def test_grad_cam_of_a_linear_head_is_its_class_activation_map():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0").eval()
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits, cam = reference_cam(model, pixels)
    with torch.no_grad():
        expected_logits, expected_cam = DetectorWithCAM(model).eval()(pixels)
    assert torch.equal(logits, expected_logits)
    assert torch.allclose(cam, expected_cam, atol=1e-5 * float(expected_cam.abs().max()))


def test_a_resnet_se_bundle_carries_a_verified_grad_cam_that_forensic_uses(face_dataset, tmp_path):
    from forensic.bundle import load_bundle
    from forensic.inference import EnsembleRunner
    from trainer.export.bundle import export_bundle, load_run_model
    from trainer.config import FitConfig
    from trainer.fit import fit

    run = tmp_path / "run"
    fit(FitConfig(data=str(face_dataset), out=str(run), arch="resnet_se", epochs=1, batch_size=8, size=SIZE,
                  workers=0, augment="none"))
    bundle = export_bundle([run], tmp_path / "bundle", gradient_graphs=False)

    entry = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["models"][0]
    assert entry["outputs"] == ["logits", "cam"] and entry["cam"]["method"].startswith("Grad-CAM")
    assert entry["cam"]["cosine"] >= 0.999

    # The graph's CAM is PyTorch's Grad-CAM at any batch size (the batch dimension is dynamic).
    model = load_run_model(run).model
    session = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        pixels = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        logits, cam = session.run(None, {"pixels": pixels.numpy()})
        expected_logits, expected_cam = (t.numpy() for t in reference_cam(model, pixels))
        assert cam.shape == (batch, SIZE // 8, SIZE // 8)  # resnet_se's stride 8
        assert np.allclose(logits, expected_logits, atol=1e-4)
        assert np.allclose(cam, expected_cam, atol=1e-3 * float(np.abs(expected_cam).max()))
        assert np.abs(cam).max() > 0

    runner = EnsembleRunner(load_bundle(bundle.path), device="cpu")
    assert runner.cam_models == [entry["name"]]
    prediction = runner.predict_pixels(np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32))
    assert prediction.cams[entry["name"]].shape == (2, SIZE // 8, SIZE // 8)
