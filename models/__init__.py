"""Ground floor: what a model is (architectures, training, export, the bundle format)."""
