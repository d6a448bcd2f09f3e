"""Validation each epoch: a model's predictions over a loader, their loss, accuracy and ROC-AUC
(the whole set's under torchrun), and which epoch's figures are best."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from trainer import distributed


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, P(fake) and mean cross-entropy over a loader, with the model in eval mode."""
    model.eval()
    losses, labels, scores = [], [], []
    for pixels, y in loader:
        logits = model(pixels.to(device)).float()
        losses.append(F.cross_entropy(logits, y.to(device), reduction="sum").item())
        scores.append(logits.softmax(1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    y_true, y_score = np.concatenate(labels), np.concatenate(scores)
    return y_true, y_score, sum(losses) / len(y_true)


def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device,
             ctx: distributed.Context | None = None) -> tuple[float, float, float | None]:
    """Loss, accuracy at P(fake) >= 0.5, ROC-AUC (None when one class is absent). With a
    distributed `ctx`, the loader holds this process's share and the figures are the whole set's."""
    if ctx is None or len(loader.dataset):
        y_true, y_score, loss = predict(model, loader, device)
    else:  # a process whose share of a validation set smaller than the world is empty
        y_true, y_score, loss = np.zeros(0, int), np.zeros(0, np.float32), 0.0
    if ctx is not None:
        y_true, y_score, loss = ctx.gather_predictions(y_true, y_score, loss)
    accuracy = float(((y_score >= 0.5).astype(int) == y_true).mean())
    auc = float(roc_auc_score(y_true, y_score)) if len(set(y_true.tolist())) == 2 else None
    return loss, accuracy, auc


def auc_key(metrics: dict | None) -> tuple[float, float]:
    """Orders epochs: the higher validation ROC-AUC, then the lower validation loss; none comes last."""
    if metrics is None:
        return (-math.inf, -math.inf)
    return (metrics["val_auc"] if metrics["val_auc"] is not None else -1.0, -metrics["val_loss"])
