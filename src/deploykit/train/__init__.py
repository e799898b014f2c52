"""Fit a zoo architecture on an ImageFolder or a bundled dataset -> a self-describing checkpoint.

``fit(config)`` writes ``<out>/best.pth`` (``deploykit.models.checkpoint.save_checkpoint``: arch, classes, class
names, preprocessing, training args, best validation accuracy; readable with ``weights_only=True``, so ``deploykit
export runs/<arch>/best.pth`` needs no flags), ``<out>/last.pth`` (state for ``--resume``) and ``<out>/metrics.json``.

The stages, one module each: ``config`` (what the run is asked to do) -> ``data`` (the images, preprocessed and
augmented) -> ``model`` (fresh, or ``--from`` with a new head) -> ``loop`` (epochs, phases, torchrun) ->
``checkpoints`` (what each epoch writes); ``run.fit`` runs them in that order.
"""

from deploykit.train.config import EpochRecord, TrainConfig, TrainResult
from deploykit.train.data import TrainData, load_data, preprocess_for, trained_on_grayscale
from deploykit.train.run import fit
from deploykit.train.model import find_head, model_for_training, replace_head

__all__ = ["EpochRecord", "TrainConfig", "TrainData", "TrainResult", "find_head", "fit", "load_data",
           "model_for_training", "preprocess_for", "replace_head", "trained_on_grayscale"]
