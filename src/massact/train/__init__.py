"""Training GPT-2 with default, sink or bias attention, with the activation monitor on.

Importing this package registers its checkpoints with `massact.models.registry`, so `load_model(RUN_DIR)`
(and every command) loads a trained model.
"""

from massact.models.registry import register_loader
from massact.train.loader import is_checkpoint, load_checkpoint_model

register_loader("massact-train", is_checkpoint, load_checkpoint_model)

__all__ = ["is_checkpoint", "load_checkpoint_model"]
