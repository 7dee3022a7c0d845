"""Point machinery shared by every head family: features at points and the coordinate frames
(``point_features``), the point loss of paper §3.2 and its options (``point_loss``), adaptive
subdivision of §4.2 (``subdivision``), mixed supervision's per-kind losses (``mixed_loss``) and the
ConvFC head of both PointRend heads (``conv_fc_head``)."""
