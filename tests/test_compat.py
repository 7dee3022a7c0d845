"""point_sup.compat in both states: without detectron2's C++ extension (this machine's offline route)
and with one (simulated by a real importable ``detectron2._C`` module in a subprocess)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from point_sup import compat


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )


without_extension = pytest.mark.skipif(
    compat.HAS_C_EXTENSION, reason="detectron2._C is really installed here"
)


@without_extension
class TestWithoutExtension:
    def test_state(self):
        assert compat.HAS_C_EXTENSION is False
        assert compat.apply() is False  # idempotent
        assert compat.coco_eval_fast_impl_available() is False
        assert "detectron2._C" not in sys.modules  # no stand-in module: detectron2's fallbacks stay on

    def test_importing_extension_is_clear_error(self):
        with pytest.raises(compat.MissingExtensionError, match=r"cannot import detectron2\._C.*from source"):
            from detectron2 import _C  # noqa: F401
        with pytest.raises(ImportError):  # what detectron2's own fallbacks catch
            import detectron2._C  # noqa: F401

    def test_rotated_ops_fail_clearly(self):
        from detectron2.layers import nms_rotated
        from detectron2.layers.rotated_boxes import pairwise_iou_rotated

        boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0], [11.0, 10.0, 4.0, 4.0, 30.0]])
        with pytest.raises(compat.MissingExtensionError, match="nms_rotated.*rotated boxes.*from source"):
            nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.5)
        with pytest.raises(RuntimeError, match="box_iou_rotated"):
            pairwise_iou_rotated(boxes, boxes)

    def test_fast_cocoeval_fails_clearly(self):
        with pytest.raises(compat.MissingExtensionError, match="use_fast_impl=False"):
            from detectron2.evaluation.fast_eval_api import COCOeval_opt  # noqa: F401

    def test_coco_evaluator_falls_back_to_pycocotools(self, tmp_path):
        from detectron2.evaluation import coco_evaluation
        from pycocotools.cocoeval import COCOeval

        assert coco_evaluation.COCOeval_opt is COCOeval

    def test_default_setup_works(self, tmp_path):
        import argparse

        from detectron2.config import get_cfg
        from detectron2.engine import default_setup
        from detectron2.utils.collect_env import collect_env_info

        assert "cannot import detectron2._C" in collect_env_info()
        cfg = get_cfg()
        cfg.OUTPUT_DIR = str(tmp_path)
        default_setup(cfg, argparse.Namespace(config_file="", eval_only=False))
        assert (tmp_path / "config.yaml").is_file()

    def test_without_compat_rotated_ops_are_obscure(self):
        # Documents why compat exists: without it the failure does not name the missing extension.
        proc = _run_python(
            """
            import torch
            from detectron2.layers import nms_rotated
            nms_rotated(torch.rand(2, 5), torch.rand(2), 0.5)
            """
        )
        assert proc.returncode != 0
        assert "from source" not in proc.stderr


def test_full_install_is_left_untouched(tmp_path):
    """With an importable detectron2._C, apply() changes nothing: the compiled extension of a full
    install where there is one (upstream built from source), else a stand-in module."""
    (tmp_path / "_C.py").write_text(
        "def get_compiler_version():\n    return 'GCC 12.2'\n"
        "def get_cuda_version():\n    return 'not available'\n"
        "def has_cuda():\n    return False\n"
    )
    proc = _run_python(
        f"""
        import sys, detectron2
        try:
            import detectron2._C as real  # before point_sup: nothing of it is in the way yet
        except ImportError:
            real = None
            detectron2.__path__.append({str(tmp_path)!r})
        import point_sup, torch
        from point_sup import compat
        import detectron2._C as ext
        assert compat.HAS_C_EXTENSION is True, compat.HAS_C_EXTENSION
        if real is None:
            assert ext.__file__.startswith({str(tmp_path)!r}), ext.__file__
        else:
            assert ext is real, (ext, real)
        assert compat.apply() is True
        assert not any(type(f).__name__ == '_MissingExtensionFinder' for f in sys.meta_path)
        if real is None:
            try:
                torch.ops.detectron2.nms_rotated
            except (AttributeError, RuntimeError):
                pass
            else:
                raise AssertionError('compat registered rotated-op stubs on a full install')
        else:  # the real operators, not stubs
            boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0], [11.0, 10.0, 4.0, 4.0, 30.0]])
            assert torch.ops.detectron2.nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
        from detectron2.utils.collect_env import collect_env_info
        assert ext.get_compiler_version() in collect_env_info()
        print('UNTOUCHED', 'compiled' if real is not None else 'stand-in')
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "UNTOUCHED" in proc.stdout


def test_missing_detectron2_is_clear_error():
    proc = _run_python(
        """
        import sys
        sys.modules['detectron2'] = None  # as if detectron2 were not installed
        import point_sup
        """
    )
    assert proc.returncode != 0
    assert "point_sup needs detectron2" in proc.stderr
