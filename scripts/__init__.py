"""User commands. The Python ones run from the repo root as modules (`python -m scripts.demo`);
the shell wrappers do that for you."""
