"""Package layout, the part pyproject.toml cannot say: every package under csm_adapt/ is
discovered, the built-in plugins in plugins/ install as `csm_adapt_plugins`, and the shipped recipes
in recipes/ (with the demo data the offline codec is fitted to) as `csm_adapt/recipes` (a symlink
in the source tree), so a wheel install has them too. plugins/examples/ holds separate distributions:
their files ship as data (`csm-adapt plugins --copy-example DEST` copies them out), not as
packages. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["csm_adapt", "csm_adapt.*"]), "csm_adapt_plugins", "csm_adapt.recipes"],
    package_dir={"csm_adapt_plugins": "plugins"},
    package_data={
        "csm_adapt": ["assets/*.json"],
        "csm_adapt_plugins": ["examples/*/*.py", "examples/*/*.toml", "examples/*/tests/*.py"],
        "csm_adapt.recipes": [
            "*.toml",
            "demo_data/*.csv",
            "demo_data/*.json",
            "demo_data/*.py",
            "demo_data/wavs/*.wav",
        ],
    },
)
