"""How the recipes of docs/reproducing.md are tested: the one list of scale knobs applied to its commands.

The recipe test (tests/recipes/test_readme_recipes.py) runs every command of docs/reproducing.md's
recipe block as written, on replicas of the datasets, changing only what is listed here. That page
shows this list verbatim ("How the recipes are tested"; a test keeps the two equal). Keys a recipe depends on
(mask format, box head, point loss, datasets, classes, heads, schedules other than the number of
iterations) must never be added: a test checks the keys against SCALE_KEYS.
"""

# Appended to every tools/train_net.py and tools/generate_pseudo_masks.py command (KEY VALUE pairs).
RECIPE_SCALE_OPTS = [
    "MODEL.DEVICE", "cpu",                                # device: no GPU on CI machines
    "SOLVER.IMS_PER_BATCH", "1",                          # batch: 1 image instead of 16
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",         # batch: 64 sampled RoIs per image, not 512
    "SOLVER.MAX_ITER", "1",                               # iterations: one training step
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",  # input size
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
    "DATALOADER.NUM_WORKERS", "0",                        # data-loading workers
    "TEST.EVAL_PERIOD", "0",                              # eval period: evaluate at the end only
    # evaluation depth: a one-step model scores every box below 0.05; keep them for the evaluators,
    # 10 per image (of 100, 300 for LVIS), from 100 proposals (of 1000)
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.FCOS.INFERENCE_TH_TEST", "0.0",                # the same for CondInst / BoxInst's scores
]  # fmt: skip

# Command-line flags whose value is replaced where a command has them.
RECIPE_SCALE_FLAGS = {
    "--num-gpus": "1",  # device: one CPU process instead of 8 GPUs
    "--workers": "1",  # simulator workers: the suite's process does not fork
}

# The only config keys RECIPE_SCALE_OPTS may set.
SCALE_KEYS = {
    "MODEL.DEVICE",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.MAX_ITER",
    "INPUT.MIN_SIZE_TRAIN",
    "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
    "DATALOADER.NUM_WORKERS",
    "TEST.EVAL_PERIOD",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "TEST.DETECTIONS_PER_IMAGE",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.FCOS.INFERENCE_TH_TEST",
}

# Weights: the ImageNet checkpoints the configs name (detectron2://ImageNetPretrained/...) cannot be
# downloaded here; the test puts randomly initialised backbones of the same architectures, in
# Detectron2's checkpoint format, into a temporary download cache ($FVCORE_CACHE), where Detectron2
# finds them as it finds a downloaded file. MODEL.WEIGHTS itself is never overridden, so the transfer
# recipes load the COCO checkpoints their configs name.
