"""Maps the three top-level folders onto the `limitlab` namespace: theory/ -> limitlab.theory,
numerics/ -> limitlab.numerics, verify/ -> limitlab.verify (what each holds: README.md and docs/)."""
from setuptools import find_packages, setup

_FOLDERS = ("theory", "numerics", "verify")
packages, package_dir = [], {}
for folder in _FOLDERS:
    package_dir[f"limitlab.{folder}"] = folder
    packages.append(f"limitlab.{folder}")
    packages += [f"limitlab.{folder}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
