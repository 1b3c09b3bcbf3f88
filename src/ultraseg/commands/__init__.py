"""The ``ultraseg`` command (:mod:`~ultraseg.commands.console`) and its subcommands: ``predict``, ``evaluate-folder``
and ``serve`` (:mod:`~ultraseg.commands.viewer`). Thin shells over :mod:`ultraseg.runtime`: no PyTorch, DVC or
training code (tests/runtime/test_boundary.py)."""
