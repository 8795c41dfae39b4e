"""Weakly supervised semantic segmentation with BAS: multi-label BAS, seeds, IRN refinement."""
