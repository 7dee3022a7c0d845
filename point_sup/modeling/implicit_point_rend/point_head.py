"""Paper §4.1: Implicit PointRend's point head, a small MLP whose weights are generated per instance.

For each instance the parameter head (:mod:`point_sup.modeling.implicit_point_rend.mask_head`) outputs
one flat (num_params,) vector; :class:`DynamicPointHead` splits it into the weights and biases of an
MLP (``NUM_FC`` hidden layers of ``FC_DIM``, then ``FC_DIM → K``) and evaluates it at box-relative
points ``(u, v) ∈ [0, 1]²`` (frames: :mod:`point_sup.modeling.common.point_features`). Its input per
point: the random Fourier encoding of the position (:func:`fourier_position_encoding`,
``POS_ENC_ENABLED``: ``[sin(2π q G), cos(2π q G)]`` of ``q = 2 (u, v) - 1``, a fixed ``G ~ N(0, 1)``
of shape (2, 128), buffer ``pos_enc_gaussian``; 256 channels), then, optionally, the fine-grained
features sampled there (``IMAGE_FEATURE_ENABLED``, POINT_HEAD.IN_FEATURES).

Layout of the parameter vector, Detectron2's ``ImplicitPointHead``'s (so a checkpoint's prediction
layer needs no permutation): all weight matrices layer by layer, each ``(out, in)`` row-major, then
all bias vectors layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["POS_ENC_NUM_FREQUENCIES", "DynamicPointHead", "fourier_position_encoding"]

# 128 random frequencies → 256 encoding channels (sin and cos), as in Detectron2's ImplicitPointHead.
POS_ENC_NUM_FREQUENCIES = 128


def fourier_position_encoding(point_coords: torch.Tensor, gaussian_matrix: torch.Tensor) -> torch.Tensor:
    """Random Fourier features of box-relative positions.

    Args:
        point_coords: (R, P, 2) box-relative (u, v) in [0, 1]^2 (values outside encode positions
            outside the box).
        gaussian_matrix: (2, F) fixed random frequencies.

    Returns:
        (R, 2F, P): ``sin`` of ``2π (2 (u, v) - 1) G`` in channels [0, F), ``cos`` in [F, 2F).
    """
    # Centring on the box makes the encoding symmetric about the box centre; 2π makes G's rows
    # frequencies in cycles per half box.
    centred = 2.0 * point_coords - 1.0
    projected = 2.0 * math.pi * (centred @ gaussian_matrix.to(centred.dtype))
    return torch.cat([torch.sin(projected), torch.cos(projected)], dim=2).transpose(1, 2)


class DynamicPointHead(nn.Module):
    """The point head whose parameters are inputs: a batched per-instance MLP.

    Holds no trainable parameter; only the fixed positional-encoding matrix (a buffer).
    """

    def __init__(
        self,
        *,
        feature_channels: int,
        fc_dim: int,
        num_fc: int,
        num_outputs: int,
        image_feature_enabled: bool,
        pos_enc_enabled: bool,
    ) -> None:
        """
        Args:
            feature_channels: channels of the fine-grained features (sum over IN_FEATURES).
            fc_dim: width of the hidden layers (256).
            num_fc: number of hidden layers (3); the output layer comes on top.
            num_outputs: K, logits per point (number of classes, or 1 if class-agnostic).
            image_feature_enabled: use the fine-grained features as input.
            pos_enc_enabled: use the Fourier encoding of the box-relative position as input.
        """
        super().__init__()
        if num_fc < 1:
            raise ValueError(f"The point head needs at least one hidden layer, got NUM_FC={num_fc}")
        self.image_feature_enabled = image_feature_enabled
        self.pos_enc_enabled = pos_enc_enabled
        self.num_outputs = num_outputs
        in_channels = feature_channels if image_feature_enabled else 0
        if pos_enc_enabled:
            in_channels += 2 * POS_ENC_NUM_FREQUENCIES
            self.register_buffer("pos_enc_gaussian", torch.randn(2, POS_ENC_NUM_FREQUENCIES))
        if in_channels == 0:
            raise ValueError("IMAGE_FEATURE_ENABLED and POS_ENC_ENABLED cannot both be off")
        self.in_channels = in_channels
        dims = [in_channels] + [fc_dim] * num_fc + [num_outputs]
        # (out, in) of each layer, input layer first.
        self.layer_shapes: list[tuple[int, int]] = list(zip(dims[1:], dims[:-1], strict=True))
        self.num_params = sum(o * i + o for o, i in self.layer_shapes)

    def initial_params(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One randomly initialised point-head MLP as a (num_params,) vector (the layout above).

        Weights of the hidden layers are He-normal (std ``sqrt(2 / in)``, for the ReLU after them),
        of the output layer ``sqrt(1 / in)``; biases are zero. Used as the bias of the parameter
        head's prediction layer with ``PARAMS_INIT: shared``: with the reference initialisation every
        generated weight starts near 0, and through the NUM_FC + 1 generated layers the gradient
        reaching the first ones is a product of those near-zero weights, so early training can hardly
        shape the mask (it learns a near-constant logit per box first).
        """
        weights = []
        for k, (out_dim, in_dim) in enumerate(self.layer_shapes):
            gain = 2.0 if k < len(self.layer_shapes) - 1 else 1.0
            weights.append(torch.randn(out_dim * in_dim, generator=generator) * math.sqrt(gain / in_dim))
        biases = [torch.zeros(out_dim) for out_dim, _ in self.layer_shapes]
        return torch.cat(weights + biases)

    def split_params(self, params: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Cut the generated parameter vectors into per-layer weights and biases.

        Args:
            params: (R, num_params) in the layout of the module docstring.

        Returns:
            weights: per layer (R, out, in); biases: per layer (R, out, 1).
        """
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"Expected (R, {self.num_params}) parameters, got {tuple(params.shape)}")
        R = params.shape[0]
        sizes = [o * i for o, i in self.layer_shapes] + [o for o, _ in self.layer_shapes]
        chunks = torch.split(params, sizes, dim=1)
        n = len(self.layer_shapes)
        weights = [w.reshape(R, o, i) for w, (o, i) in zip(chunks[:n], self.layer_shapes, strict=True)]
        biases = [b.reshape(R, o, 1) for b, (o, _) in zip(chunks[n:], self.layer_shapes, strict=True)]
        return weights, biases

    def select_params(
        self, params: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`split_params`, then, with ``classes``, only each instance's output row.

        Args:
            params: (R, num_params) generated parameters.
            classes: optional (R,) int64 (ignored by a class-agnostic head).

        Returns:
            weights: per layer (R, out, in); biases: per layer (R, out, 1); the output layer's
            ``out`` is 1 with ``classes``. Views of ``params`` except that selected output layer, so
            instances can be sliced from them (``w[rows]``) at no cost: inference selects once and
            evaluates chunks of instances with :meth:`evaluate`.
        """
        weights, biases = self.split_params(params)
        if classes is not None and self.num_outputs > 1:
            rows = torch.arange(params.shape[0], device=params.device)
            weights[-1] = weights[-1][rows, classes].unsqueeze(1)
            biases[-1] = biases[-1][rows, classes].unsqueeze(1)
        return weights, biases

    def forward(
        self,
        fine_grained_features: torch.Tensor | None,
        point_coords: torch.Tensor,
        params: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Point logits.

        Args:
            fine_grained_features: (R, C, P) features at the points (ignored if image features are
                disabled; may then be None).
            point_coords: (R, P, 2) box-relative (u, v) of the points.
            params: (R, num_params) generated parameters.
            classes: optional (R,) int64; if given (and the head is class-specific) only the output
                row of each instance's class is evaluated (inference; same numbers, K times cheaper).

        Returns:
            (R, K, P) logits, or (R, 1, P) when ``classes`` is given.
        """
        return self.evaluate(fine_grained_features, point_coords, *self.select_params(params, classes))

    def evaluate(
        self,
        fine_grained_features: torch.Tensor | None,
        point_coords: torch.Tensor,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Point logits of the MLPs given by ``weights`` / ``biases`` (from :meth:`select_params`).

        Args:
            fine_grained_features, point_coords: as for :meth:`forward`, for R instances.
            weights, biases: per layer (R, out, in) and (R, out, 1).

        Returns:
            (R, out, P) logits, ``out`` of the last layer (K, or 1 after class selection).
        """
        inputs = []
        if self.pos_enc_enabled:
            inputs.append(fourier_position_encoding(point_coords, self.pos_enc_gaussian))
        if self.image_feature_enabled:
            assert fine_grained_features is not None
            inputs.append(fine_grained_features)
        x = torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]
        for k, (w, b) in enumerate(zip(weights, biases, strict=True)):
            # (R, out, in) @ (R, in, P) + (R, out, 1): one small MLP per instance in a single bmm.
            x = torch.baddbmm(b, w, x)
            if k < len(weights) - 1:
                # In place: no second (R, out, P) tensor (baddbmm's backward needs its inputs only).
                x = F.relu(x, inplace=True)
        return x
