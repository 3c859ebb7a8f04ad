"""User-facing errors: each message says what is wrong and what would be right.

``haste_core.run`` prints them without a traceback and exits with status 2.
"""

from __future__ import annotations


class HasteError(Exception):
    """A problem with the user's input (recipe, plugin, file), not a bug in haste."""


class RecipeError(HasteError):
    """A recipe value is wrong. ``path`` is its YAML path (``alignment[1].pairs``), empty for the whole file.

    Components raise it with a path relative to their own node (``RecipeError("...", "pairs")``); the recipe
    loader prefixes the node's path, so messages always name the full YAML path.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def within(self, prefix: str) -> RecipeError:
        """The same error, its path prefixed with the path of the enclosing node."""
        if not prefix:
            return self
        if not self.path:
            return RecipeError(self.message, prefix)
        joiner = "" if self.path.startswith("[") else "."
        return RecipeError(self.message, f"{prefix}{joiner}{self.path}")


class PluginError(HasteError):
    """A plugin failed to load, registered a duplicate name, or implements a hook that does not exist."""


class CheckpointError(HasteError):
    """A checkpoint is missing, unreadable, or does not fit the recipe."""


class RunFolderError(HasteError):
    """The run folder already holds a different run, or holds checkpoints the recipe says not to resume."""


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGINT, SIGUSR1) ended the run after its checkpoint was saved; not a user error.
    The command prints the message and exits with status 75 (``haste_core.distributed.EXIT_PREEMPTED``)."""
