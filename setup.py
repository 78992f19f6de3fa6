"""Ships the top-level systemd/ files inside the package (trainer/daemon/unit_files/).

Everything else is declared in pyproject.toml. The unit files live at the top of the
checkout, where people look for them; a wheel needs them inside a package so that
``trainctl install-unit`` finds them with importlib.resources after a plain ``pip install``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

UNIT_FILES = ("trainer.service", "trainer@.service", "trainer.sysusers", "config.example.toml")


class BuildWithUnitFiles(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "trainer" / "daemon" / "unit_files"
        target.mkdir(parents=True, exist_ok=True)
        for name in UNIT_FILES:
            self.copy_file(str(Path("systemd") / name), str(target / name))


setup(cmdclass={"build_py": BuildWithUnitFiles})
