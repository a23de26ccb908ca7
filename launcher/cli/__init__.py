"""The Hydra boundary: commands that turn the composed config into plain values and call a stage."""
