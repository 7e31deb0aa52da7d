"""Ray Tune sweeps that reproduce the AFedPG paper's figures, and their plots."""
