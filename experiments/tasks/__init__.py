"""Toy tasks: generated fresh every step from a seed, each with a difficulty knob and a fixed
held-out test set; single-token r50k symbols, query last, one scored answer token."""
