"""Point machinery shared by every head family: features at points and the coordinate frames
(``point_features``), the point loss of paper §3.2 and its options (``point_loss``), adaptive
subdivision of §4.2 (``subdivision``), mixed supervision's per-kind losses (``mixed_loss``) and the
ConvFC head of both PointRend heads (``conv_fc_head``), BoxInst's box terms (``box_terms``) and the
box prior on the ROI heads' RoIs (``box_prior``, with ``roi_heads``: ``PointSupROIHeads``)."""

from . import roi_heads  # noqa: F401  (registers PointSupROIHeads)
