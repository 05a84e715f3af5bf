"""LingBot-World Real-Time: a causal, streaming, servable LingBot-World."""
from .model import CacheConfig, CausalWanModel, ModelConfig, model_config

__all__ = ["CacheConfig", "CausalWanModel", "ModelConfig", "model_config"]
__version__ = "0.1.0"
