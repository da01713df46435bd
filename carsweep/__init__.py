"""carsweep: hyperparameter search for fine-tuning image classifiers, then explain the winner."""

__version__ = "0.1.0"
