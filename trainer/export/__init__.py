"""From trained runs to a bundle `forensic` loads.

    bundle           `trainer export`: runs' checkpoints → ONNX models, calibration and
                     manifest.json (forensic.bundle.write_bundle); also loads a run's model
    average          `trainer average`: runs fine-tuned from one start → one model with their mean
                     weights (a model soup), which exports like a run
    gradient_graph   each model's input-gradient graph (loss and ∇ₓ loss in ONNX), for white-box
                     attacks on a bundle (forensic's self-test, `trainer eval --bundle`)
    cam_graph        Grad-CAM traced into the model's graph, for heads without an exact CAM
    tracing          what those two graphs share: tracing a gradient into ONNX-exportable ATen
                     ops, and trying each tracing mode until one exports and verifies

Import the module you need; this package imports nothing.
"""
