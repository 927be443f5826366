"""Bedside as a DICOM node: the C-STORE SCP that modalities push images to (receiver.py)."""
