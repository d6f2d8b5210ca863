"""Every model type, one file each, behind one interface (:class:`Model`) and one registry (:data:`MODELS`)."""

from ebmtool.models.base import MODELS, Model, SampleOutput, bottom, register_model
from ebmtool.models.bidvl import BiDVLModel
from ebmtool.models.io import load_model, model_tensors
from ebmtool.models.latent import LatentModel, generator_for, hierarchical_sample, latent_model

__all__ = ["MODELS", "Model", "SampleOutput", "LatentModel", "BiDVLModel", "bottom", "register_model",
           "load_model", "model_tensors", "generator_for", "latent_model", "hierarchical_sample"]
