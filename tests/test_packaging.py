"""Every package folder of fastnn is listed in pyproject.toml, so `pip install .` ships it."""
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_every_fastnn_package_is_installed():
    if not os.path.isdir(os.path.join(ROOT, "fastnn")):
        pytest.skip("run from a copy of tests/ without the source tree (tools/check_wheel.sh)")
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        listed = re.search(r"^packages = \[(.*?)\]", f.read(), re.S | re.M).group(1)
    listed = set(re.findall(r'"([\w.]+)"', listed))
    found = {os.path.relpath(folder, ROOT).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(ROOT, "fastnn"))
             if "__init__.py" in files}
    assert found <= listed, f"missing from pyproject.toml's packages: {sorted(found - listed)}"
