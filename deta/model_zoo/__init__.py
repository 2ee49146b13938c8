"""The released configs and models from Python, like ``detectron2.model_zoo``.

Example::

    from deta import model_zoo
    cfg = model_zoo.get_config("deta_R_50_5scale_12ep.yaml")
    model = model_zoo.get("deta_R_50_5scale_12ep.yaml", weights="adet_checkpoint0011.pth")
"""

from .model_zoo import get, get_config, get_config_file, list_configs

__all__ = ["get", "get_config", "get_config_file", "list_configs"]
