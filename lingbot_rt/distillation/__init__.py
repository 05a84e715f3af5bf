"""Distillation of the bidirectional many-step teacher into the block-causal 4-step student:
ODE pairs, causal initialisation, DMD with Self-Forcing rollouts (Ray Train / torchrun), and
the memory plan of the full-size run."""
