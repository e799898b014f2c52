"""deploykit: PyTorch image classifiers to ONNX, FP16/INT8 and TensorRT, with every step proven by numbers."""

__version__ = "0.1.0"
