"""PyTorch reference runner (FP32, eval mode, no grad)."""

from __future__ import annotations

import numpy as np

from deploykit.runners.base import Runner


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, module, input_shape: tuple[int, ...], device: str = "cpu") -> None:
        import torch

        if isinstance(module, torch.export.ExportedProgram):
            from deploykit.models.program import program_batch

            self.fixed_batch = program_batch(module)  # traced at batch 1: the base class splits and pads
            module = module.module()
        self.module = module.to(device)
        if hasattr(self.module, "eval") and not isinstance(self.module, torch.fx.GraphModule):
            self.module.eval()
        self.input_shape = tuple(input_shape)
        self.device = device

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()

