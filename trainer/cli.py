"""`trainer`: the command line. Thin: parsing and printing; the work is in trainer.fit/export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forensic.errors import ForensicError
from trainer import __version__
from trainer.data import DatasetError
from trainer.export import ExportError, export_run
from trainer.fit import EpochMetrics, FitConfig, RunError, fit
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
        "  trainer export runs/lite0 --out exports/lite0"
    ),
    rich_markup_mode=None,
)
console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trainer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    pass


def _print_epoch(m: EpochMetrics) -> None:
    auc = "n/a" if m.val_auc is None else f"{m.val_auc:.4f}"
    console.print(
        f"epoch {m.epoch}: train loss {m.train_loss:.4f} acc {m.train_accuracy:.4f} | "
        f"val loss {m.val_loss:.4f} acc {m.val_accuracy:.4f} AUC {auc} | {m.seconds:.1f}s",
        highlight=False, soft_wrap=True,
    )


@app.command(name="fit")
def fit_command(
    data: Path = typer.Option(..., "--data", help="Dataset folder: DIR/{train,validation,test}/{real,fake}/*.png|jpg"),
    out: Path = typer.Option(..., "--out", help="Run folder for config, metrics and checkpoints."),
    arch: str = typer.Option("efficientnet_lite0", "--arch", help=f"Architecture: {', '.join(list_models())}."),
    method: str = typer.Option("erm", "--method", help=f"Training method: {', '.join(list_methods())}."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(3e-4, "--lr", min=0.0),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Input size (default: the architecture's)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="Offline ImageNet weights (default: when the architecture has them)."),
    workers: int = typer.Option(2, "--workers", min=0, help="Data-loading processes."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt."),
) -> None:
    """Train a real/fake classifier on face crops; validation accuracy and ROC-AUC each epoch."""
    if arch not in list_models():
        _fail(ValueError(f"unknown architecture {arch!r}; known: {', '.join(list_models())}"))
    if method not in list_methods():
        _fail(ValueError(f"unknown training method {method!r}; known: {', '.join(list_methods())}"))
    config = FitConfig(data=str(data), out=str(out), arch=arch, method=method, epochs=epochs, batch_size=batch_size,
                       lr=lr, size=size, pretrained=pretrained, workers=workers, seed=seed, device=device)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task("starting", total=None)

    def on_progress(phase: str, done: int, total: int) -> None:
        progress.update(task, description=phase, completed=done, total=total)

    try:
        with progress:
            best = fit(config, resume=resume, on_progress=on_progress, on_epoch=_print_epoch)
    except (DatasetError, RunError, ValueError) as exc:
        _fail(exc)
    auc = "n/a" if best["val_auc"] is None else f"{best['val_auc']:.4f}"
    console.print(f"best epoch {best['epoch']}: val acc {best['val_accuracy']:.4f} AUC {auc}; run in {out}", highlight=False, soft_wrap=True)


@app.command(name="export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A `trainer fit` run folder."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name (default: the folder's name)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Decision threshold on P(fake)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle's manifest and model files."),
) -> None:
    """Export a run as an ONNX bundle, after checking ONNX Runtime agrees with PyTorch."""
    if checkpoint not in ("best", "last"):
        _fail(ValueError(f"--checkpoint must be best or last, not {checkpoint!r}"))
    try:
        bundle = export_run(run_dir, out, name=name, checkpoint=checkpoint, threshold=threshold, force=force)
    except (ExportError, ForensicError) as exc:
        _fail(exc)
    difference = bundle.manifest["producer"]["onnx_max_logit_difference"]
    console.print(f"bundle {bundle.name} written to {out} (manifest sha256 {bundle.sha256[:12]}; "
                  f"ONNX Runtime vs PyTorch max |Δlogit| {difference:.1e})", highlight=False, soft_wrap=True)


@app.command(name="synth")
def synth_command(
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Write a tiny face-crop dataset here."),
    media: Optional[Path] = typer.Option(None, "--media", help="Write sample images and videos here."),
    size: int = typer.Option(128, "--size", min=16, help="Crop size of the dataset's images."),
    per_split: int = typer.Option(24, "--per-class", min=2, help="Training images per class (validation and test: a third)."),
) -> None:
    """Make smoke-test data from scikit-image's astronaut photo (not for real training)."""
    from trainer.synthetic import make_face_dataset, make_sample_media

    if dataset is None and media is None:
        _fail(ValueError("give --dataset DIR and/or --media DIR"))
    if dataset is not None:
        third = max(2, per_split // 3)
        counts = make_face_dataset(dataset, {"train": per_split, "validation": third, "test": third}, size=size)
        console.print(f"dataset written to {dataset}: {counts}", highlight=False, soft_wrap=True)
    if media is not None:
        files = make_sample_media(media)
        console.print(f"{len(files)} sample files written to {media}", highlight=False, soft_wrap=True)
