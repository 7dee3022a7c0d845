"""point_sup: pointly-supervised instance segmentation for Detectron2.

detectron2 and torch are deliberately not in install_requires: detectron2 is not on PyPI
(install it from source, see README.md), and torch must match the user's CUDA.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    reqs = [line.split("#", 1)[0].strip() for line in lines]
    return [r for r in reqs if r]


setup(
    name="point_sup",
    version="0.1.0",
    description="Pointly-supervised instance segmentation (Cheng, Parkhi, Kirillov, CVPR 2022) on Detectron2",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    # Two packages: point_sup_labels makes P_N labels (simulation, formats, the annotation tool) and
    # imports neither torch nor detectron2; point_sup trains from them on Detectron2.
    packages=find_packages(include=["point_sup", "point_sup.*", "point_sup_labels", "point_sup_labels.*"]),
    # The annotation tool's page (plain HTML/CSS/JS, served by point_sup_labels.annotation.server).
    package_data={"point_sup_labels.annotation": ["static/*.html", "static/*.js", "static/*.css"]},
    install_requires=_requirements(),
    extras_require={"dev": ["pytest", "pytest-timeout", "ruff", "tifffile"]},
)
