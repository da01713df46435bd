"""The trainable imports and trains with torch and torchvision alone: ray is blocked here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from no_ray import BLOCK_RAY

SCRIPT = BLOCK_RAY + textwrap.dedent("""
    sys.path.insert(0, sys.argv[2])

    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    from carsweep.config.trial import TrialConfig
    import carsweep.trainable as trainable
    from trainable_data import make_tiny_dataset

    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the ray block did not work")

    folder = make_tiny_dataset(Path(sys.argv[1]), per_split={"train": 2, "val": 1})
    seen = []

    class Print:
        def report(self, metrics, checkpoint_dir):
            seen.append((metrics["epoch"], (checkpoint_dir / "checkpoint.pt").is_file()))

    config = TrialConfig(epochs=1, batch_size=4, resize=32, num_workers=0, device="cpu")
    trainable.train(config, folder, reporter=Print())
    print("reports", seen)
    print("ray modules", sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
""")


def test_trainable_imports_and_trains_without_ray(tmp_path):
    tests_folder = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data"), tests_folder],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reports [(1, True)]" in result.stdout
    assert "ray modules []" in result.stdout
