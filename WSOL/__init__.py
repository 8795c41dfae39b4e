"""Weakly supervised object localization with BAS."""
