"""The first lines of a Python script that must run with ray impossible to import."""

BLOCK_RAY = '''
import sys

class BlockRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"ray is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, BlockRay())
'''
