"""offload: distribute Nix builds over the local machine and SSH builders.

The package root imports nothing: ``offload-hook`` starts once per derivation Nix builds
remotely, and every millisecond of its start is a millisecond Nix waits. Errors live in
``offload.errors``. Not even ``__future__``: ``python -m offload`` runs this first, before
``offload.__main__`` can take a Ctrl-C, and an import here is a moment in which Python's own
traceback would say it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
