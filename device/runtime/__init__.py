"""Inference backends behind one small seam (see base.py) and an explicit registry."""
