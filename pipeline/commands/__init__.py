"""Sub-commands of the ``pipeline`` CLI, one module each."""
