"""Training-only code: runs on a workstation with torch (the `train` extra), never on the appliance.

The chest X-ray data and its split (data), augmentation, the architecture, the training loop, the
operating point for shift, ONNX export and the bundle writer with its model card. It stands on the
torch-free model contract (models.bundle, models.preprocess, models.audit, models.metrics) and
writes bundles that the appliance loads without any of this.
"""
