"""Packaging that pyproject.toml cannot say: the top-level templates/ and static/ travel inside the wheel.

Everything else (name, dependencies, scripts) is in pyproject.toml. The two folders stay where they are, the
source everyone edits; ``package_dir`` maps them to the subpackages ``baton_assets.templates`` and
``baton_assets.static`` of the wheel, and ``package_data`` takes every file under them. ``baton_assets`` tells the
settings where they ended up (docs/architecture.md, "Packaging").
"""

from setuptools import find_packages, setup

ASSETS = {"baton_assets.templates": "templates", "baton_assets.static": "static"}

setup(
    packages=[
        *find_packages(
            include=[
                "baton_site*",
                "orchestrator*",
                "approvals*",
                "console*",
                "automation*",
                "audit*",
                "api*",
                "demo*",
                "baton_assets",
            ]
        ),
        *ASSETS,
    ],
    package_dir=ASSETS,
    package_data={name: ["**/*"] for name in ASSETS},
)
