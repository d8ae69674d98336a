"""Models: DS-Net, its atomic blocks, the paper's baselines, and the registry that names them.

Importing this package registers every model family, so `create_model(name)` sees them all.
"""

from dsnet.models.registry import MODELS, ModelInfo, create_model, list_models, model_info, register_model
from dsnet.models.atomic_blocks import BLOCKS, register_block
from dsnet.models.dsnet import DSNet
from dsnet.models.parameters import split_parameters

__all__ = [
    "MODELS",
    "BLOCKS",
    "DSNet",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_block",
    "register_model",
    "split_parameters",
]

# Model families register themselves on import.
from dsnet.models import dsnet as _dsnet  # noqa: E402,F401
from dsnet.models import (  # noqa: E402,F401
    adark_net,
    densenet,
    ie_skip,
    mobilenetv2,
    preact_resnet,
    resnet,
    robnet,
    wide_resnet,
)
