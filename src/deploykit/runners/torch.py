"""PyTorch reference runner (FP32, eval mode, no grad)."""

from __future__ import annotations

import numpy as np

from deploykit.runners.base import Runner


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, module, input_shape: tuple[int, ...], device: str = "cpu") -> None:
        import torch

        if isinstance(module, torch.export.ExportedProgram):
            self.fixed_batch = _static_batch(module)
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


def _static_batch(program) -> int | None:
    """The batch size a ``torch.export`` program was traced with, or None when its batch dimension is dynamic.

    A program traced at batch 1 guards ``x.size()[0] == 1``; the base class then splits and pads for it.
    """
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            dim = val.shape[0] if val is not None and len(val.shape) > 0 else None
            return dim if isinstance(dim, int) else None
    return None
