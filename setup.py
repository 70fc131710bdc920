"""Build hook: ship the bundled corpora and recipes inside the package, so that a wheel installed from a
registry (not only a checkout) can run `foundry quickstart`. Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("data", "recipes")  # repository folders copied to foundry/_bundled/ in a built wheel


class BuildPyWithBundled(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout itself
        here = Path(__file__).resolve().parent
        for name in BUNDLED:
            target = Path(self.build_lib) / "foundry" / "_bundled" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(here / name, target)


setup(cmdclass={"build_py": BuildPyWithBundled})
