"""The evidence an export folder carries: which images judged its artifacts, and PyTorch's logits on them.

Export chooses the verification images (:func:`choose_images`: the model's own kind of images whenever it has
any), verifies on them, and records them in the folder (:func:`write_evidence`): the images as the uint8 pixels
the model sees (``evidence-images.npy``, decoded, resized and cropped; the float batch is
``Preprocess.normalize`` of them, bit for bit), PyTorch's logits on them (``evidence-logits.npy``) and, for
labelled images, their class indices (``evidence-labels.npy``), each listed with its sha256 under the manifest's
``"evidence"`` key. Every later command (verify, build, bench, report), on a device without torch too, judges
each artifact against those logits on those images (:func:`verification_data`), so one file gets one verdict
everywhere. Torch-free: NumPy and the manifest only.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.data import Bundled, ImageSet, bundled, resolve_images
from deploykit.errors import InputError
from deploykit.files import atomic_path, sha256_file
from deploykit.manifest import EVIDENCE_FORMAT, MANIFEST_NAME, Manifest, checked_file
from deploykit.preprocess import Preprocess
from deploykit.messages import SILENT, Reporter

IMAGES_NAME = "evidence-images.npy"
LOGITS_NAME = "evidence-logits.npy"
LABELS_NAME = "evidence-labels.npy"

# How many images judge a verdict. --max-images moves it; a user's folder larger than this is sampled (seed 0).
DEFAULT_MAX_IMAGES = 512
# The stored images may take at most this share of the folder (its ONNX files, predicted before they are all
# written) or EVIDENCE_FLOOR, whichever is larger: a folder is copied to devices and a ResNet-50 one should grow by
# a small fraction (9% of 98 MB: 60 images at 224x224), while a small model still gets hundreds of images (8 MiB:
# 10,000 digits at 28x28, 55 photos at 224x224). An explicit --max-images is the user's choice and is kept whole.
EVIDENCE_SHARE = 0.09
EVIDENCE_FLOOR = 8 << 20
# Predicted size of each variant relative to model.onnx, to cap the evidence before the variants are written.
VARIANT_SHARE = {"fp16": 0.5, "int8": 0.25}

# Holding verification images out of --calib: calibration keeps its --calib-size sample whenever the folder has
# more images than that, else gives up HELD_OUT_SHARE of them; a folder too small to give MIN_HELD_OUT images and
# keep --min-calib is verified on its calibration images themselves (in-domain, not held out: said so).
HELD_OUT_SHARE = 0.2
MIN_HELD_OUT = 20
SEED = 0


@dataclass(frozen=True)
class Selection:
    """The images a verdict rests on and what they are: ``held_out`` True (never calibrated on), False (the
    calibration images themselves) or None (no INT8 calibration to hold them out of); ``domain`` False for the
    bundled photos (not the model's kind of images); ``why`` says where they came from and why this many."""

    images: ImageSet
    held_out: bool | None
    why: str
    domain: bool = True
    calib: ImageSet | None = None  # the calibration sample, the held-out images removed (export with INT8)

    def describe(self) -> dict[str, Any]:
        return {"source": self.images.source, "n_images": len(self.images), "held_out": self.held_out,
                "domain": self.domain, "selection": self.why}


@dataclass
class VerificationData:
    """Preprocessed verification images ready to judge on, with what they are (``info``: :meth:`Selection.describe`
    or the evidence's record) and, when they are the folder's evidence images, PyTorch's recorded logits."""

    batch: np.ndarray
    pixels: np.ndarray | None
    labels: np.ndarray | None
    info: dict[str, Any]
    recorded: np.ndarray | None = None  # PyTorch's logits on exactly these images, recorded at export
    selection: Selection | None = None  # how export chose them (None: read back from a folder's evidence)

    @property
    def n_images(self) -> int:
        return int(self.batch.shape[0])


def image_budget(preprocess: Preprocess, fp32_bytes: int, precisions: dict[str, int] | None = None) -> int:
    """Bytes the stored images may take: EVIDENCE_SHARE of the folder's ONNX files (``precisions``: how many
    variants of each kind will join ``model.onnx``), at least EVIDENCE_FLOOR."""
    predicted = fp32_bytes * (1 + sum(VARIANT_SHARE.get(k, 0.0) * n for k, n in (precisions or {}).items()))
    return max(EVIDENCE_FLOOR, int(EVIDENCE_SHARE * predicted))


def pixel_bytes(preprocess: Preprocess) -> int:
    return preprocess.channels * preprocess.height * preprocess.width


def _limit(max_images: int | None, byte_cap: int | None, preprocess: Preprocess) -> tuple[int, str]:
    """The most images a verdict takes, and why: --max-images when given, else the smaller of the default cap and
    what the evidence cap holds."""
    if max_images is not None:
        return max_images, f"--max-images {max_images}"
    fits = None if byte_cap is None else max(1, byte_cap // pixel_bytes(preprocess))
    if fits is not None and fits < DEFAULT_MAX_IMAGES:
        return fits, (f"the evidence cap: the images stored in the folder may take {byte_cap / 2**20:.1f} MiB "
                      f"({EVIDENCE_SHARE:.0%} of its ONNX files, at least {EVIDENCE_FLOOR >> 20} MiB); raise it with "
                      "--max-images, or keep the images out with --no-evidence-images")
    return DEFAULT_MAX_IMAGES, f"the default cap; --max-images sets it"


def _cap(images: ImageSet, max_images: int | None, byte_cap: int | None, preprocess: Preprocess,
         what: str) -> tuple[ImageSet, str]:
    """A seeded sample of ``images`` within --max-images and the evidence cap, and a sentence saying why."""
    n = len(images)
    limit, reason = _limit(max_images, byte_cap, preprocess)
    if n <= limit:
        return images, f"all {n} {what}"
    return images.sample(limit, seed=SEED), f"{limit} of {n} {what} (a seeded sample: {reason})"


def held_out_count(n: int, calib_size: int, min_calib: int, limit: int) -> int:
    """How many of ``n`` calibration candidates to hold out for verification (0: too few to split)."""
    h = min(limit, max(n - calib_size, round(n * HELD_OUT_SHARE)))
    return h if h >= MIN_HELD_OUT and n - h >= min_calib else 0


def split_held_out(pool: ImageSet, count: int) -> tuple[ImageSet, ImageSet]:
    """``(calibration pool, held-out images)``: ``count`` images out of ``pool``, stratified by class when it is
    labelled, seeded so a re-export makes the same split."""
    rng = random.Random(f"deploykit-held-out-{SEED}")
    n = len(pool)
    if pool.labels is None:
        held = set(rng.sample(range(n), count))
    else:  # each class in proportion, the rounding remainder to the largest classes first
        by_class: dict[int, list[int]] = {}
        for i, label in enumerate(pool.labels):
            by_class.setdefault(label, []).append(i)
        held = set()
        quotas = {c: count * len(m) / n for c, m in by_class.items()}
        take = {c: int(q) for c, q in quotas.items()}
        for c in sorted(quotas, key=lambda c: (take[c] - quotas[c], c))[:count - sum(take.values())]:
            take[c] += 1
        for c, members in sorted(by_class.items()):
            held.update(rng.sample(members, min(take[c], len(members))))
    keep = [i for i in range(n) if i not in held]
    return pool.subset(keep), pool.subset(sorted(held))


def choose_images(data: Path | str | None, preprocess: Preprocess, *, calib_pool: ImageSet | None = None,
                  calib: Path | str | None = None, calib_size: int = 512, min_calib: int = 32,
                  max_images: int | None = None, byte_cap: int | None = None,
                  reporter: Reporter = SILENT) -> Selection:
    """The verification images of an export. ``--data`` when given; else, with INT8, images of ``--calib`` never
    calibrated on (a bundled set's held-out split; a folder's :func:`held_out_count`), or the calibration images
    themselves when the folder is too small to split; the bundled photos only when nothing else exists.
    ``calib_pool``: every usable --calib image (the calibration sample is then drawn from what is left)."""
    if data is not None:
        images, why = _cap(resolve_images(data, reporter=reporter), max_images, byte_cap, preprocess,
                           f"--data images of {data}")
        held = None
        if calib_pool is not None:
            overlap = set(images.paths) & set(calib_pool.paths)
            held = not overlap
            if overlap:
                why += f"; {len(overlap)} of them are also --calib images (not held out)"
        return Selection(images, held, why, calib=calib_pool)
    if calib_pool is None:
        images, why = _cap(resolve_images(None), max_images, byte_cap, preprocess, "bundled photo views")
        return Selection(images, None, why + ": not the model's kind of images (no --data or --calib given)",
                         domain=False)
    name = bundled(calib) if calib is not None and not Path(calib).exists() else None
    if name is Bundled.digits:  # the bundled held-out split: never calibrated on, the images eval reports on
        images, why = _cap(resolve_images(str(calib), split="val"), max_images, byte_cap, preprocess,
                           f"held-out images of --calib {calib} (its val split, never calibrated on)")
        return Selection(images, True, why, calib=calib_pool)
    limit, reason = _limit(max_images, byte_cap, preprocess)
    count = held_out_count(len(calib_pool), calib_size, min_calib, limit)
    if count:
        rest, held = split_held_out(calib_pool, count)
        why = (f"{count} of {len(calib_pool)} --calib images of {calib or 'calib'}, held out of calibration "
               f"(seeded{', stratified by class' if held.labels is not None else ''}; calibration keeps the other "
               f"{len(rest)}, at most --calib-size {calib_size} of them; the held-out share is the larger of the "
               f"images beyond --calib-size and {HELD_OUT_SHARE:.0%}, at most {limit}: {reason})")
        return Selection(held, True, why, calib=rest)
    images, why = _cap(calib_pool, max_images, byte_cap, preprocess, f"--calib images of {calib or 'calib'}")
    why += (f": the calibration images themselves (in the model's domain but not held out: {len(calib_pool)} "
            f"are too few to hold out {MIN_HELD_OUT} and keep --min-calib {min_calib}; pass --data for a held-out "
            "verdict)")
    return Selection(images, False, why, calib=calib_pool)


def images_for(data: Path | str | None, preprocess: Preprocess, *, max_images: int | None = None,
               reporter: Reporter = SILENT) -> Selection:
    """Verification images outside an export: ``--data`` (held out of nothing this command knows), or the bundled
    photos for a folder exported before it carried evidence."""
    return choose_images(data, preprocess, max_images=max_images, reporter=reporter)


def held_out_text(info: dict) -> str:
    """What a verdict's images are to the model, in words (from :meth:`deploykit.evidence.Selection.describe`)."""
    if info.get("domain") is False:
        return "not the model's kind of images"
    return {True: "held out of calibration", False: "the calibration images themselves, not held out"}.get(
        info.get("held_out"), "not checked against a calibration set (--data, or no INT8 calibration)")


def pixels_sha256(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(f"{pixels.shape}|{pixels.dtype}".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def load_selection(selection: Selection, preprocess: Preprocess, labels: np.ndarray | None) -> VerificationData:
    pixels = preprocess.pixel_batch(selection.images.paths)
    return VerificationData(preprocess.normalize(pixels), pixels, labels, selection.describe(), selection=selection)


# -- the record in the folder ----------------------------------------------------------------------------
def write_evidence(folder: Path, manifest: Manifest, data: VerificationData, logits: np.ndarray, *,
                   images: bool = True) -> dict[str, Any]:
    """Write the evidence files into ``folder`` (the export's staging folder) and record them in ``manifest``."""
    folder = Path(folder)
    arrays = {"logits": (LOGITS_NAME, np.ascontiguousarray(logits, np.float32))}
    if images and data.pixels is not None:
        arrays["images"] = (IMAGES_NAME, np.ascontiguousarray(data.pixels, np.uint8))
    if data.labels is not None:
        arrays["labels"] = (LABELS_NAME, np.ascontiguousarray(data.labels, np.int64))
    files = {}
    for key, (name, array) in arrays.items():
        with atomic_path(folder / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
        files[key] = {"path": name, "sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    info = data.info
    record = {"format": EVIDENCE_FORMAT, "n_images": data.n_images, "source": info.get("source", ""),
              "held_out": info.get("held_out"), "domain": info.get("domain", True),
              "selection": info.get("selection", ""), "reference": "pytorch",
              "pixels_sha256": pixels_sha256(data.pixels), "files": files}
    manifest.extra["evidence"] = record
    return record


def _load_array(folder: Path, entry: dict, what: str, dtype, shape: tuple) -> np.ndarray:
    path = checked_file(folder, entry["path"], entry["sha256"], entry["bytes"])
    try:
        with open(path, "rb") as fh:
            array = np.load(fh, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable {what} array ({exc}); re-run `deploykit export`") from None
    if array.dtype != dtype or array.shape != shape:
        raise InputError(f"{path} holds {array.dtype} {array.shape}, but {MANIFEST_NAME} describes {np.dtype(dtype)} "
                         f"{shape}; re-run `deploykit export`")
    return array


def check_evidence(manifest: Manifest) -> None:
    """Each evidence file is the one recorded (present, plain, sha256): a one-line InputError otherwise."""
    record = manifest.evidence
    if record is None or manifest.folder is None:
        return
    for entry in record["files"].values():
        checked_file(manifest.folder, entry["path"], entry["sha256"], entry["bytes"])


def recorded_data(manifest: Manifest, *, reporter: Reporter = SILENT) -> VerificationData | None:
    """The folder's evidence images and PyTorch's logits on them, checked (None: a folder without evidence).
    Evidence without images (``--no-evidence-images``) asks for --data."""
    record = manifest.evidence
    if record is None:
        return None
    folder, pre = manifest.folder, manifest.preprocessing
    n, classes = record["n_images"], int(manifest.model["num_classes"])
    files = record["files"]
    if "images" not in files:
        raise InputError(f"{folder} records PyTorch's logits but not its verification images (exported with "
                         "--no-evidence-images): pass --data with those images (they are matched by content), or "
                         "other images (then judged against the FP32 ONNX or the PyTorch source)")
    pixels = _load_array(folder, files["images"], "evidence images", np.uint8, (n, pre.height, pre.width,
                                                                                 pre.channels))
    logits = _load_array(folder, files["logits"], "evidence logits", np.float32, (n, classes))
    labels = None
    if "labels" in files:
        labels = _load_array(folder, files["labels"], "evidence labels", np.int64, (n,))
        if labels.size and not (labels.min() >= 0 and labels.max() < classes):
            raise InputError(f"{folder / files['labels']['path']} has class indices outside 0..{classes - 1}; "
                             "re-run `deploykit export`")
    if pixels_sha256(pixels) != record["pixels_sha256"]:
        raise InputError(f"{folder / files['images']['path']} does not match {MANIFEST_NAME} (pixel digest "
                         "differs); re-run `deploykit export`")
    info = {"source": record["source"], "n_images": n, "held_out": record.get("held_out"),
            "domain": record.get("domain", True), "selection": f"the folder's evidence: {record.get('selection', '')}"}
    return VerificationData(pre.normalize(pixels), pixels, labels, info, recorded=logits)


def recorded_logits_for(manifest: Manifest, pixels: np.ndarray) -> np.ndarray | None:
    """PyTorch's recorded logits when ``pixels`` are exactly the evidence images (e.g. --data supplying images
    left out with --no-evidence-images); None otherwise."""
    record = manifest.evidence
    if record is None or pixels_sha256(pixels) != record["pixels_sha256"]:
        return None
    return _load_array(manifest.folder, record["files"]["logits"], "evidence logits", np.float32,
                       (record["n_images"], int(manifest.model["num_classes"])))
