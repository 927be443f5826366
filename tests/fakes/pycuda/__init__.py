"""Fake pycuda: see driver.py."""
