"""`trainer eval`: a trained run or an exported bundle on a dataset split, as a report folder;
and cross-validation over a prepared dataset.

    evaluate       evaluate_run / evaluate_bundle: the crops, the steps below, the report dict
    scorers        what is scored, behind one interface: a run (PyTorch) or a bundle (ONNX Runtime)
    sweep          every batch scored clean, under each attack and each corruption
    adversarial    `--save-adv`: adversarial examples kept as 16-bit PNGs
    metrics        clean metrics at frame and video level (AUC and its interval, EER, ...)
    masking        the gradient-masking checks
    summary        the report's numbers from the sweep's scores
    gradcam        Grad-CAM of a PyTorch model (a run's heatmaps)
    heatmaps       heatmap panels for a sample of each confusion-matrix cell
    report         the report folder: metrics.json, metrics.csv, scores.csv, plots, index.html
    plots          the PNG plots
    html_report    index.html
    console        what `trainer eval` prints
    compare        `trainer eval --compare`
    folds          `trainer folds` and `trainer pool`: grouped K-fold views and pooled scores
    errors         EvaluationError

Import the module you need; this package imports nothing.
"""
