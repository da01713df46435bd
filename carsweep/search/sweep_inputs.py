"""A sweep's inputs as every node will see them: paths made absolute, and the start weights
the driver loads once for all trials (and analyze's retrain tasks)."""

from __future__ import annotations

from pathlib import Path

from carsweep.config.sweep import SweepConfig
from carsweep.storage import location


def resolved(config: SweepConfig) -> SweepConfig:
    """Paths made absolute (dataset, storage, weights files), so trials on any node and a
    later `analyze` from any folder find the same ones; sweep.yaml records them so. A storage
    URI (s3://, gs://) stays as given, without a trailing slash; so does a dataset URI, for
    check_dataset to refuse by name."""
    dataset = str(location(config.dataset).resolve()) if config.dataset else None
    storage = str(location(config.storage_path).resolve())
    asha = config.asha.model_copy(update={"max_t": config.max_t})
    space, searcher = dict(config.space), config.searcher
    if "weights" in space:  # a weights file, fixed or a choice; imagenet and none stay names
        from carsweep.trainable.model import IMAGENET, NONE

        def absolute(value):  # not a string: left for check_sweep to name
            if not isinstance(value, str) or value in (IMAGENET, NONE):
                return value
            return str(Path(value).expanduser().resolve())

        files = [absolute(value) for value in space["weights"].values]
        space["weights"] = space["weights"].model_copy(update={"values": files})
        points = [point | {"weights": absolute(point["weights"])} if "weights" in point else point
                  for point in searcher.points_to_evaluate]
        searcher = searcher.model_copy(update={"points_to_evaluate": points})
    return config.model_copy(update={"dataset": dataset, "storage_path": storage, "asha": asha,
                                     "space": space, "searcher": searcher})


def shipped_weights(config: SweepConfig) -> dict[tuple[str, str], dict]:
    """Start weights loaded once by the driver (ImageNet download, a local file), keyed by
    (model, weights) as trials look them up (`trial.weights_key`): ImageNet's are per model,
    a file is read once for every model of the space.

    `tune.with_parameters` puts them in Ray's object store, so worker nodes need neither
    internet nor the file.
    """
    from carsweep.trainable import load_weights
    from carsweep.trainable.model import IMAGENET, NONE

    sources = [name for name in config.listed_values("weights") if name != NONE]
    files = {name: load_weights(name) for name in sources if name != IMAGENET}
    return {(model, name): files[name] if name in files else load_weights(name, model)
            for model in config.listed_values("model") for name in sources}
