"""dsnet: Diverse-Structured Networks and adversarially robust training and evaluation in PyTorch."""

from dsnet.errors import DsnetError

__version__ = "0.1.0"
__all__ = ["DsnetError", "__version__"]
