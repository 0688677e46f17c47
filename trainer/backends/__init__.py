"""Training backends: how a base model is loaded with a fresh LoRA adapter and how the adapter is saved.

Every backend trains through the same loop (``trainer/loop.py``); ``select_backend`` picks one for this machine.
"""

from tunewright.trainer.backends.base import TrainingBackend, select_backend

__all__ = ["TrainingBackend", "select_backend"]
