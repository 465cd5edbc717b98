"""CPU inference without torch: what a laptop needs to index and search, and nothing more.

Owns the ONNX Runtime path (``onnx``), the numpy tokenizer (``tokenizer``) and image
transform (``transform``) that match open_clip's, and the torch-free ``.pt`` writer
(``ptfile``). torch stays the runtime for training, ONNX export and CUDA/MPS; this
package must not import torch or open_clip except inside the export step.
"""
