"""The factory of the family: which class a model config describes (model_class) and the model rebuilt from it
(build_model). It lives here, beside the classes rather than in the base class's file, so that VAE's module never
imports its subclasses (pythae's auto_model: the base knows no sibling, the factory knows them all).

A config is the dict that a model's `config` (and a checkpoint's model_config) holds; the first entry of FAMILY
whose key the config holds names its class, VAE otherwise."""
import inspect

from .hierarchical import HierarchicalVAE
from .vae import VAE
from .vaegan import VAEGAN

# (the config key that marks a sibling class, that class, the size key it takes instead of VAE's latent_dim)
FAMILY = (("latent_dims", HierarchicalVAE, "latent_dims"), ("gamma", VAEGAN, "latent_dim"))


def model_class(config):
    """The class of the family that a model config (`config` of a model, a checkpoint's model_config) describes:
    HierarchicalVAE when it holds latent_dims, VAEGAN when it holds gamma, else VAE. An unknown key is refused,
    naming it, as is a missing input_dim or latent_dim (latent_dims); the class checks each value."""
    if not isinstance(config, dict):
        raise TypeError(f"the model config must be a dict of VAE arguments; got {type(config).__name__}")
    cls, size = next(((c, s) for key, c, s in FAMILY if key in config), (VAE, "latent_dim"))
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise ValueError(f"the model config has unknown key(s) {unknown}; known: {known}")
    missing = [k for k in ("input_dim", size) if k not in config]
    if missing:
        raise ValueError(f"the model config lacks {missing}")
    return cls


def build_model(config):
    """The model (a VAE, a HierarchicalVAE or a VAEGAN) from the dict that its `config` (and a checkpoint) holds:
    every key is an argument of its class (model_class)."""
    return model_class(config)(**config)
