"""The first lines of a Python script that must run with some packages impossible to import."""


def blocking(*packages: str) -> str:
    """Python lines after which importing any of `packages` (or a submodule) raises."""
    return f'''
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            raise ImportError(f"{{name.split('.')[0]}} is blocked in this test ({{name}})")
        return None

sys.meta_path.insert(0, Blocked())
'''


BLOCK_RAY = blocking("ray")
