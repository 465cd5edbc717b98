"""clip_retrieval: search image collections with short Chinese queries through CLIP-style models.

The public API lives in ``clip_retrieval.api``; this module stays import-light so the
CLI starts fast. Modules that moved into the layer packages keep their old import paths
for one release (``_moved``).
"""

from . import _moved

__version__ = "0.1.0"

_moved.install()
