"""A PyTorch network from a MONAI Bundle: the definition in ``configs/inference.json``, weights in ``models/``.

MONAI Bundle specification: ``network_def`` is a config item (``{"_target_": "monai.networks.nets...", ...}``)
that :class:`monai.bundle.ConfigParser` instantiates; ``models/model.pt`` holds its ``state_dict``. Unlike
TorchScript this keeps the module tree, which explanation methods that hook into layers (Grad-CAM) need.

A bundle's config is code (``_target_`` and ``$`` expressions are evaluated): load only bundles you trust, as
with any model file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from operators.model_bundle import ModelBundleError

INFERENCE_CONFIG = "configs/inference.json"
WEIGHTS = "model.pt"


def read_config(bundle: str | Path, config: str = INFERENCE_CONFIG) -> Any:
    """The bundle's parsed-on-demand config (a :class:`monai.bundle.ConfigParser`)."""
    from monai.bundle import ConfigParser

    path = Path(bundle) / config
    if not path.is_file():
        raise ModelBundleError(f"no network config {path} in the model bundle")
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except (OSError, ValueError) as exc:
        raise ModelBundleError(f"unreadable network config {path}: {exc}") from None
    return parser


def load_network(bundle: str | Path, weights: Path, config: str = INFERENCE_CONFIG) -> torch.nn.Module:
    """Instantiate ``network_def`` of the bundle, load ``weights`` (a state_dict) into it, return it in eval mode."""
    parser = read_config(bundle, config)
    if "network_def" not in parser:
        raise ModelBundleError(f"{Path(bundle) / config} has no 'network_def'")
    network = parser.get_parsed_content("network_def", instantiate=True)
    if not isinstance(network, torch.nn.Module):
        raise ModelBundleError(f"'network_def' of {Path(bundle) / config} is not a torch.nn.Module")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise ModelBundleError(f"weights {weights} do not fit the bundle's network_def: {exc}") from None
    return network.eval()
