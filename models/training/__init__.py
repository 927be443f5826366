"""Training-only code: runs on a workstation with torch (the `train` extra), never on the appliance.

One package per exam (chest/, skin/), each with its recipe in `exam.py` (data and split, input
contract, augmentation, trainer, identity, policies, scoring rule, card), found by the registry
(registry.py); the shared machinery beside them: the architecture, dihedral averaging and ensembles
in one graph, the training loop's common parts, ONNX export, the bundle writer, the `bedside train`
and `export` commands, the ensemble command and the chest exam's operating point for shift. It
stands on the torch-free model contract (models.bundle, models.preprocess, models.audit,
models.metrics) and writes bundles that the appliance loads without any of this.
"""
