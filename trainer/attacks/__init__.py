"""Adversarial attacks, L∞ in pixel space [0, 1], for training and for evaluation.

    white_box   FGSM and PGD, written once on a gradient and offered for the two gradient
                sources: an nn.Module (autograd; the training methods) and a `trainer eval`
                scorer (a run's autograd or a bundle's ONNX gradient graphs)
    square      a black-box random search (Square attack) on a scorer's margin
    unet        the dual-attacker method's learned U-Net attacker
    suite       the attacks `trainer eval` runs, by name (AttackSpec), and run_attack

Import the module you need; this package imports nothing.
"""
