"""point_sup: pointly-supervised instance segmentation for Detectron2.

detectron2 and torch are deliberately not in install_requires: detectron2 is not on PyPI
(install it from source, see README.md), and torch must match the user's CUDA.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CONFIGS_PACKAGE = "point_sup.model_zoo_configs"  # point_sup.model_zoo reads the installed configs there


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
    packages=[
        *find_packages(include=["point_sup", "point_sup.*", "point_sup_labels", "point_sup_labels.*"]),
        CONFIGS_PACKAGE,
    ],
    # configs/ stays at the repository root (tools/ and README commands name configs/...), and is
    # installed as the data package point_sup/model_zoo_configs with the same layout, so that
    # point_sup.model_zoo finds it after a plain `pip install` and the _BASE_ paths still resolve.
    package_dir={CONFIGS_PACKAGE: "configs"},
    package_data={
        # The annotation tool's page (plain HTML/CSS/JS, served by point_sup_labels.annotation.server).
        "point_sup_labels.annotation": ["static/*.html", "static/*.js", "static/*.css"],
        CONFIGS_PACKAGE: ["*.yaml", "**/*.yaml"],
    },
    install_requires=_requirements(),
    extras_require={
        "dev": ["pytest", "pytest-timeout", "ruff", "tifffile"],
        # tools/export_model.py --format onnx, and running ONNX files (point_sup.export.ExportedModel).
        "export": ["onnx", "onnxruntime"],
    },
)
