"""An FP32 export's wall time against the work it cannot skip (issue 26): one PyTorch pass plus one ONNX Runtime
pass over the verification images.

    .venv/bin/python benchmarks/export_speed_vgg16.py [--arch vgg16] [--out /tmp/export-speed]

Writes a seeded-random torchvision ``--arch`` state_dict (timing does not depend on the weights), runs
``deploykit export`` on it (bundled verification photos, defaults) in a subprocess, then, in this process and
on the same images, one PyTorch pass (eval, inference mode, batch 16, channels-last as verification runs it)
and one ONNX Runtime pass (the exported graph, deploykit's session settings). Prints the export's ``timings``,
the essential passes' seconds and the ratio export / (PyTorch + ONNX Runtime). Not a test: minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--out", type=Path, default=Path("/tmp/export-speed"))
    args = parser.parse_args()
    import torch
    import torchvision

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / f"{args.arch}.pth"
    if not ckpt.is_file():
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, args.arch)().state_dict(), ckpt)
    folder = args.out / "export"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deploykit", "export", str(ckpt), "--arch", args.arch, "--out",
                           str(folder), "--force"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return proc.returncode
    from deploykit.data import verification_set
    from deploykit.manifest import Manifest
    from deploykit.models.loading import LoadOptions, load_model
    from deploykit.runners.onnxrt import OnnxRuntimeRunner
    from deploykit.runners.torch import TorchRunner

    manifest = Manifest.load(folder)
    batch = verification_set(None).load(manifest.preprocessing)
    loaded = load_model(ckpt, LoadOptions(arch=args.arch))
    torch_runner = TorchRunner(loaded.module, manifest.preprocessing.shape, channels_last=True)
    t = time.perf_counter()
    torch_runner.infer(batch)
    torch_s = time.perf_counter() - t
    ort_runner = OnnxRuntimeRunner(folder / "model.onnx")
    t = time.perf_counter()
    ort_runner.infer(batch)
    ort_s = time.perf_counter() - t
    essential = torch_s + ort_s
    result = {"arch": args.arch, "images": len(batch), "export_wall_s": round(wall, 1),
              "export_timings": manifest.timings, "export_stages_total_s": round(sum(manifest.timings.values()), 1),
              "pytorch_pass_s": round(torch_s, 1), "onnxruntime_pass_s": round(ort_s, 1),
              "ratio_export_over_essential": round(wall / essential, 2), "load": os.getloadavg()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
