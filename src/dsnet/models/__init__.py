"""dsnet.models: DS-Net, its atomic blocks, the paper's baselines, and the registry that names them.

One file per family (`dsnet.py`, `resnet.py`, `wide_resnet.py`, ...); each registers its variants as data
(`register_model(name, builder, info, **arguments)`). The registry imports the families on first use, so
`create_model(name)` sees them all and importing this package costs nothing.
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "MODELS": "registry",
    "ModelInfo": "registry",
    "ModelEntry": "registry",
    "create_model": "registry",
    "list_models": "registry",
    "model_info": "registry",
    "register_model": "registry",
    "check_model_arguments": "registry",
    "miniature_arguments": "registry",
    "BLOCKS": "atomic_blocks",
    "register_block": "atomic_blocks",
    "DSNet": "dsnet",
    "ImageClassifier": "base",
    "split_parameters": "parameters",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
