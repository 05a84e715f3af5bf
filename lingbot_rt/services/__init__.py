"""Serving: the gateway, the scheduler, the stages, the metrics."""
