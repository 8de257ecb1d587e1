"""`python -m batch ...` from the pack folder, or `python path/to/pack/batch ...` as a script."""
import os
import sys

if not __package__:
    # Run as a script: make the pack folder the import root, not batch/ itself (whose module names
    # must not shadow the standard library's).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))
    from batch.cli import main
else:
    from .cli import main

if __name__ == "__main__":
    sys.exit(main())
