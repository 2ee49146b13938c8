"""DETA ("NMS Strikes Back", arXiv:2212.06137) as a Detectron2 plugin.

Importing this package registers the ``DETA`` meta-architecture and the synthetic datasets; it
never imports the compiled extension ``deta._C`` (that happens lazily, on first use of the
deformable-attention op).
"""

__version__ = "0.1.0"

from . import data as _data  # noqa: F401  only registration of the synthetic datasets
from . import modeling as _modeling  # noqa: F401  only registration of META_ARCH "DETA"
from .config import add_deta_config
from .data import DetaDatasetMapper
from .modeling import DETA
from .solver import build_deta_optimizer

__all__ = ["DETA", "DetaDatasetMapper", "add_deta_config", "build_deta_optimizer", "__version__"]
