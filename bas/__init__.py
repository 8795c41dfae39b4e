"""The shared core that WSOL/ and WSSS/ stand on: the Activation Map Constraint and the cut
backbones, data and checkpoint reading, output folders, the training run and its processes."""
