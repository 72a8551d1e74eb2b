"""Segmentation models: the architectures by name (registry), the model file (model_file) and
batched prediction of probabilities on a device (batched)."""

from btseg.models.model_file import MODEL_FORMAT, Ensemble, load_model_file, write_ensemble, write_model_file
from btseg.models.registry import MODELS, create_model

__all__ = ["MODEL_FORMAT", "MODELS", "Ensemble", "create_model", "load_model_file", "write_ensemble",
           "write_model_file"]
