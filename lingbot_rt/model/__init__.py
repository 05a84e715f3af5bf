"""The causal LingBot-World DiT: configs, attention, KV cache, checkpoints."""
from .config import CacheConfig, ModelConfig, model_config
from .dit import CausalWanModel
from .kv_cache import CacheFullError, KVCache

__all__ = ["CacheConfig", "CacheFullError", "CausalWanModel", "KVCache", "ModelConfig", "model_config"]
