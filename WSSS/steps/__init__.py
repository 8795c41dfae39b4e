"""The stages of run_sample.py, one module each with a ``run(args)``."""
