"""PyTorch reference runner (FP32, eval mode, no grad)."""

from __future__ import annotations

import numpy as np

from deploykit.models.program import program_batch
from deploykit.runners.base import Runner


def reference_device() -> str:
    """Where export's PyTorch reference runs: the CUDA GPU when PyTorch sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, module, input_shape: tuple[int, ...], device: str = "cpu", *,
                 channels_last: bool = False) -> None:
        import torch

        if isinstance(module, torch.export.ExportedProgram):
            self.fixed_batch = program_batch(module)  # traced at batch 1: the base class splits and pads
            module = module.module()
        if device != "cpu":
            import copy

            module = copy.deepcopy(module)  # the caller's module stays on the CPU (FP16 diagnostics run it there)
            torch.backends.cuda.matmul.allow_tf32 = False  # an FP32 reference: TF32 rounds inputs to 10 bits
            torch.backends.cudnn.allow_tf32 = False
        self.module = module.to(device)
        if hasattr(self.module, "eval") and not isinstance(self.module, torch.fx.GraphModule):
            self.module.eval()
        self.input_shape = tuple(input_shape)
        self.device = device
        # channels_last (verification asks for it): oneDNN's fast layout on CPU (ResNet-50: 61 -> 41 ms an image on
        # 2 cores; logits equal to ~1e-6 relative). A module whose code needs NCHW (``x.view`` after a conv) falls
        # back for good on its first failure. Graph modules from .pt2 programs keep their traced layout; bench times
        # PyTorch as users run it (NCHW).
        self._channels_last: bool | None = None if channels_last and isinstance(self.module, torch.nn.Module) and \
            not isinstance(self.module, torch.fx.GraphModule) and len(self.input_shape) == 3 else False

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode():
            out = None
            if self._channels_last is not False:
                try:
                    if self._channels_last is None:
                        self.module.to(memory_format=torch.channels_last)
                    out = self.module(x.contiguous(memory_format=torch.channels_last))
                    self._channels_last = True
                except RuntimeError:
                    self.module.to(memory_format=torch.contiguous_format)
                    self._channels_last = False
            if out is None:
                out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()

