"""The streaming pipeline: a release's models put together into `StreamingInference`."""
from .streaming import StreamBlock, StreamConfig, StreamingInference

__all__ = ["StreamBlock", "StreamConfig", "StreamingInference"]
