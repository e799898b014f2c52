"""Write the demo's input: a torchvision-style ResNet-18 state_dict with a 5-class head (seeded, no download).

This is what users typically hold after fine-tuning a torchvision model on a 5-class folder (the "flowers"
tutorials): bare weights, no architecture name, no class names.
"""

import sys
from pathlib import Path

import torch
import torchvision

out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo/resnet18_flowers5.pth")
out.parent.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), out)
print(f"wrote {out}")
