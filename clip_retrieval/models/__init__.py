"""Models: the catalogue of names, the one factory that opens them, and the two runtimes behind one protocol.

``open_encoder(name, checkpoint, device)`` is how every command gets a model (``factory``);
``Encoder`` is the protocol both runtimes serve (``encoder``): ``TorchEncoder``
(``torch_encoder``, with the families ``openclip`` and ``cnclip``) and ``OnnxEncoder``
(``onnx``, with the numpy ``tokenizer`` and ``transform``). ``catalog`` is the data (names,
languages, sizes, published figures) and ``weights`` finds weights and fails fast offline.
Importing this package imports neither torch nor ONNX Runtime.
"""

from __future__ import annotations

from .catalog import BUNDLED, DEFAULT_MODEL, DEMO_EN_MODEL, DEMO_MODEL, FAMILIES
from .encoder import Encoder, OnDemand
from .factory import Placement, is_exported, load_encoder, open_encoder, parse_model_name, placement, select_device

__all__ = ["Encoder", "OnDemand", "Placement", "open_encoder", "load_encoder", "is_exported", "parse_model_name",
           "placement", "select_device", "DEFAULT_MODEL", "DEMO_MODEL", "DEMO_EN_MODEL", "BUNDLED", "FAMILIES"]
