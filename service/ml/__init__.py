"""Model code: features, training, evaluation, registry."""
