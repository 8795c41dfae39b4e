"""The shared core of BAS: the Activation Map Constraint and the cut backbones."""
