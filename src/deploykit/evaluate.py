"""Top-1 / top-5 accuracy and a confusion matrix for a checkpoint or an exported artifact on labelled images.

The model is loaded through ``deploykit.predict.load_predictor`` (checkpoint -> PyTorch, ``.onnx`` / export folder
-> ONNX Runtime), so every artifact is judged with the preprocessing it ships with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.data import (Bundled, LabelledImages, Split, bundled, bundled_split, scan_images,
                            val_folder)
from deploykit.errors import InputError
from deploykit.files import atomic_path
from deploykit.predict import load_predictor
from deploykit.messages import SILENT, Reporter
from deploykit.text import plain_plot_text, printable

CHUNK = 64  # images preprocessed and run per step


@dataclass
class EvalReport:
    model: str
    data: str
    n: int
    top1: float  # percent
    top5: float  # percent; top-k with k = min(5, classes)
    k: int
    confusion: np.ndarray  # [true, predicted] counts over the model's classes
    class_names: list[str]
    title: str = ""  # the model as the plot names it: "resnet18 (runs/resnet18/best.pth)"
    mapping: str = ""  # how the data's class folders were mapped onto the model's outputs

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n}

    def per_class(self) -> list[tuple[str, int, float]]:
        """(class, images, recall %) for classes present in the data."""
        rows = []
        for i, name in enumerate(self.class_names):
            total = int(self.confusion[i].sum())
            if total:
                rows.append((name, total, 100.0 * float(self.confusion[i, i]) / total))
        return rows


@dataclass
class _Labelled:
    """What eval iterates: images (paths or in-memory) with labels already mapped onto the model's classes."""

    count: int
    load: Callable[[int, int, object], np.ndarray]  # (start, stop, preprocess) -> batch
    labels: np.ndarray
    source: str


def map_classes(data_names, model_names: list[str] | None, num_classes: int) -> tuple[list[int], str]:
    """The model output each class folder stands for, and a sentence saying how they were matched: by name when
    the model has class names (names that exist and do not match are refused: accuracy against mismatched
    names would be a silent 0%); without names, folders named 0..N-1 by number, else by sorted order."""
    data_names = [str(n) for n in data_names]
    if model_names:
        index = {str(name): i for i, name in enumerate(model_names)}
        missing = [n for n in data_names if n not in index]
        if missing:
            raise InputError(f"--data has class folders the model does not know: {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}; the model's classes are "
                             f"{', '.join(map(str, model_names[:10]))}{' ...' if len(model_names) > 10 else ''}: "
                             "rename the folders to those names, or pass --labels with the names of the model's "
                             "outputs in order")
        return [index[n] for n in data_names], (f"{len(data_names)} class folder(s) mapped by name onto the "
                                                f"model's {len(model_names)} classes")
    if len(data_names) > num_classes:
        raise InputError(f"--data has {len(data_names)} class folders but the model has {num_classes} outputs "
                         "and no class names; pass --labels with the names of its outputs in order")
    if all(n.isdigit() and int(n) < num_classes for n in data_names):
        return [int(n) for n in data_names], ("the model has no class names: folders named by number mapped to "
                                              "those output indices")
    shown = ", ".join(f"{n}->{i}" for i, n in enumerate(data_names[:6])) + (" ..." if len(data_names) > 6 else "")
    return list(range(len(data_names))), ("the model has no class names: class folders mapped to outputs in "
                                          f"sorted order ({shown}); pass --labels to map them by name")


def _map_labels(labels, data_names, model_names: list[str] | None, num_classes: int,
                reporter: Reporter) -> np.ndarray:
    index, how = map_classes(data_names, model_names, num_classes)
    reporter.note(how)
    return np.array([index[label] for label in labels], dtype=np.int64)


def _labelled(data: str | Path, data_root: Path | None, model_names, num_classes: int,
              reporter: Reporter) -> _Labelled:
    name = bundled(data)
    if name is not None:
        items: LabelledImages = bundled_split(name, Split.val, data_root=data_root)
        labels = _map_labels(items.labels, items.class_names, model_names, num_classes, reporter)
        return _Labelled(len(items), lambda a, b, pre: np.stack([pre.apply(items.image(i)) for i in range(a, b)]),
                         labels, items.source)
    if data_root is not None:
        raise InputError(f"--data-root is for bundled datasets ({', '.join(b.value for b in Bundled)}), "
                         f"not for the folder {data}")
    folder = Path(data)
    val = val_folder(folder) if folder.is_dir() and (folder / "train").is_dir() else None
    if val is not None:  # a dataset root with train/ and val/: evaluate the held-out part
        reporter.note(f"{folder} has train/ and {val.name}/: evaluating on {val}")
        folder = val
    images = scan_images(folder)
    if images.labels is None:
        raise InputError(f"--data {folder} is not labelled: eval needs an ImageFolder, {folder}/<class name>/*.png "
                         "(`deploykit data digits --out DIR` writes one)")
    labels = _map_labels(images.labels, images.class_names, model_names, num_classes, reporter)
    return _Labelled(len(images), lambda a, b, pre: pre.batch(images.paths[a:b]), labels, images.source)


def evaluate_model(model: Path, data: str | Path, *, data_root: Path | None = None, options=None,
                   reporter: Reporter = SILENT) -> EvalReport:
    """Run ``model`` on every labelled image of ``data`` (a folder or a bundled dataset's held-out split); a bar
    and notes (how class folders map onto the model's outputs) on ``reporter``."""
    predictor = load_predictor(Path(model), options=options)
    num_classes = _num_classes(predictor)
    names = list(predictor.class_names) if predictor.class_names else [str(i) for i in range(num_classes)]
    labelled = _labelled(data, data_root, predictor.class_names, num_classes, reporter)
    predictions, topk_hits = [], 0
    k = min(5, num_classes)
    with reporter.progress("evaluating", total=labelled.count) as task:
        for start in range(0, labelled.count, CHUNK):
            stop = min(start + CHUNK, labelled.count)
            logits = predictor.logits(labelled.load(start, stop, predictor.preprocess),
                                      f"{labelled.source}, images {start + 1}-{stop}")
            truth = labelled.labels[start:stop]
            predictions.append(logits.argmax(axis=1))
            top = np.argsort(-logits, axis=1)[:, :k]
            topk_hits += int((top == truth[:, None]).any(axis=1).sum())
            task.advance(stop - start)
    predicted = np.concatenate(predictions)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labelled.labels, predicted), 1)
    n = labelled.count
    title = f"{predictor.arch} ({model})" if predictor.arch else str(model)
    return EvalReport(str(model), labelled.source, n, 100.0 * float((predicted == labelled.labels).mean()),
                      100.0 * topk_hits / n, k, confusion, names, title=title)


def _num_classes(predictor) -> int:
    output = predictor.runner.infer(np.zeros((1, *predictor.preprocess.shape), np.float32))
    return int(output.shape[1])


def default_plot_path(model: Path) -> Path:
    """``<export folder>/confusion.png``, or ``<file stem>.confusion.png`` beside a model file."""
    model = Path(model)
    return model / "confusion.png" if model.is_dir() else model.with_name(f"{model.stem}.confusion.png")


@plain_plot_text
def plot_confusion(report: EvalReport, dest: Path) -> Path:
    """A row-normalised confusion matrix (counts written in the cells up to 20 classes) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [i for i in range(len(report.class_names)) if report.confusion[i].sum() or report.confusion[:, i].sum()]
    matrix = report.confusion[np.ix_(present, present)]
    names = [printable(report.class_names[i]) for i in present]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    size = min(16.0, max(5.0, 0.45 * len(names) + 2.5))
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{printable(report.title or report.model)}: top-1 {report.top1:.2f}%  top-{report.k} "
                 f"{report.top5:.2f}%  (n={report.n})\n{printable(report.data)}", fontsize=9)
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest
