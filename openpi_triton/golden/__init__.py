"""Golden-vector folders (``golden-tree/1`` format) and the ``golden-check`` runner."""
