"""Neural MIL heads, torchmil-style: ``forward(X, mask) -> (logits, attention)``.

``X`` is a padded batch of bags ``(B, N, ...)`` (see :func:`lymphomil.models.inputs.pad_bags`)
and ``mask`` ``(B, N)`` is True on real instances. Every head first zeroes the padded instances
(``torch.where``, so even NaN padding cannot leak) and reduces over instances with masks only, so a
patient's output depends on its own instances alone.

* :class:`InstanceClassifier` — one logit per instance (one-to-one models; no attention: None);
* :class:`PoolingMIL` — min / max / sum / mean / attention pooling, then an MLP (many-to-one);
* :class:`GatedAttentionMIL` — Ilse et al. 2018 gated attention, optional extra inputs;
* :class:`BNSigmoidMIL` — the founding report's MIL head: a 1×1 convolution gives one logit per
  spatial position; :class:`BNSigmoidAggregation` makes the patient logit a weighted mean of
  them with weights ``a = sigmoid(beta + gamma * (l - mu) / sqrt(var + eps))`` (batch-normalised
  logits). Besides ``forward`` on a padded batch of maps, ``forward_images`` (every patient's
  maps concatenated) and ``forward_rows`` (each patient's positions as rows: cached trunks).
"""
from __future__ import annotations

import torch
from torch import nn

#: how a bag of cells becomes one vector inside a network (cf. pooled.FEATURE_POOLINGS)
BAG_POOLINGS = ("min", "max", "sum", "mean", "attention")


def _zero_padding(X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set padded instances to exactly 0 (NaN/inf in the padding included)."""
    keep = mask.reshape(*mask.shape, *([1] * (X.dim() - mask.dim())))  # (B, N, 1, ...)
    return torch.where(keep, X, torch.zeros((), dtype=X.dtype))  # (B, N, ...)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))  # (B, N)
    return torch.softmax(scores, dim=1)  # (B, N)


def _mlp(in_dim: int, hidden: int, dropout: float) -> nn.Module:
    """``hidden == 0``: a logistic (linear) head; else one hidden ReLU layer."""
    if hidden <= 0:
        return nn.Linear(in_dim, 1)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, 1))


class InstanceClassifier(nn.Module):
    """A per-instance classifier: ``(B, N, d) -> logits (B, N)`` (padding gets logit 0)."""

    def __init__(self, in_dim: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.net = _mlp(in_dim, hidden, dropout)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of independent instances: ``(M, d) -> (M,)``."""
        return self.net(x).squeeze(-1)  # (M,)

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, None]:
        if mask is None:
            mask = torch.ones(X.shape[:2], dtype=torch.bool, device=X.device)  # (B, N)
        X = _zero_padding(X, mask)  # (B, N, d)
        logits = self.net(X).squeeze(-1)  # (B, N)
        return logits.masked_fill(~mask, 0.0), None  # (B, N)


class PoolingMIL(nn.Module):
    """Many-to-one: pool a bag's features (min/max/sum/mean or attention [Ilse 2018]), then MLP.

    ``forward(X (B, N, d), mask (B, N)) -> (logits (B,), attention (B, N) or None)``.
    """

    def __init__(self, in_dim: int, pooling: str = "attention", hidden: int = 64,
                 attention_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        if pooling not in BAG_POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {BAG_POOLINGS}")
        self.pooling = pooling
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(),
                                           nn.Linear(attention_dim, 1))
        self.classifier = _mlp(in_dim, hidden, dropout)

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mask is None:
            mask = torch.ones(X.shape[:2], dtype=torch.bool, device=X.device)  # (B, N)
        X = _zero_padding(X, mask)  # (B, N, d)
        m = mask.unsqueeze(-1)  # (B, N, 1)
        attention = None
        if self.pooling == "attention":
            attention = _masked_softmax(self.attention(X).squeeze(-1), mask)  # (B, N)
            z = torch.einsum("bn,bnd->bd", attention, X)  # (B, d)
        elif self.pooling == "max":
            z = X.masked_fill(~m, float("-inf")).amax(dim=1)  # (B, d)
        elif self.pooling == "min":
            z = X.masked_fill(~m, float("inf")).amin(dim=1)  # (B, d)
        elif self.pooling == "sum":
            z = X.sum(dim=1)  # (B, d)
        else:
            z = X.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1)  # (B, d)
        return self.classifier(z).squeeze(-1), attention  # (B,), (B, N)


class GatedAttentionMIL(nn.Module):
    """Gated attention MIL (Ilse, Tomczak & Welling 2018, eq. 9).

    ``h = ReLU(W x)``; ``a = softmax_n(w^T (tanh(V h) * sigmoid(U h)))``; ``z = sum_n a_n h_n``;
    ``logit = c^T [z, extra] + b``. ``extra`` ``(B, n_extra)`` (clinical attributes) joins the
    pooled embedding just before the linear classifier (its last inputs, so
    :func:`~lymphomil.models.blocks.start_linear_from_attributes` can start it as a linear model
    of the extra inputs alone).
    """

    def __init__(self, in_dim: int, hidden: int = 128, attention_dim: int = 64,
                 dropout: float = 0.25, n_extra: int = 0):
        super().__init__()
        self.n_extra = n_extra
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.att_v = nn.Linear(hidden, attention_dim)
        self.att_u = nn.Linear(hidden, attention_dim)
        self.att_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden + n_extra, 1)

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            mask = torch.ones(X.shape[:2], dtype=torch.bool, device=X.device)  # (B, N)
        X = _zero_padding(X, mask)  # (B, N, d)
        h = self.embed(X)  # (B, N, hidden)
        gate = torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))  # (B, N, attention_dim)
        attention = _masked_softmax(self.att_w(gate).squeeze(-1), mask)  # (B, N)
        z = torch.einsum("bn,bnh->bh", attention, h)  # (B, hidden)
        if self.n_extra:
            if extra is None:
                raise ValueError("this head needs its extra inputs (attributes)")
            z = torch.cat([z, extra.to(z.dtype)], dim=1)  # (B, hidden + n_extra)
        return self.classifier(z).squeeze(-1), attention  # (B,), (B, N)


class BNSigmoidAggregation(nn.Module):
    """The founding report's "custom aggregation" of position logits into a patient logit.

    For the valid positions ``l_i`` of patient ``j``:
    ``a_i = sigmoid(beta + gamma * (l_i - mu) / sqrt(var + eps))`` and
    ``logit_j = sum_i a_i l_i / sum_i a_i``. ``mu``/``var`` are the mean and (biased) variance of
    all valid logits of the batch, gradient stopped (like BatchNorm); ``gamma``/``beta`` are
    learned (init 1, 0). The report says the weights "sum all to 1", hence the division.
    In eval mode ``mu``/``var`` are running statistics (momentum ``momentum``, unbiased variance,
    as ``nn.BatchNorm1d``), so a patient's prediction never depends on the other patients.
    """

    def __init__(self, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(()))
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, logits: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits (B, P)``, ``mask (B, P)`` -> (patient logits (B,), weights (B, P)); the
        weights of each patient sum to 1."""
        logits = torch.where(mask, logits, torch.zeros((), dtype=logits.dtype))  # (B, P)
        if self.training:
            valid = logits.detach()[mask]  # (M,)
            mu = valid.mean()  # ()
            var = valid.var(unbiased=False)  # ()
            with torch.no_grad():
                n = valid.numel()
                unbiased = var * n / max(n - 1, 1)
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mu)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
                self.num_batches_tracked += 1
        else:
            mu, var = self.running_mean, self.running_var  # (), ()
        z = (logits - mu) / torch.sqrt(var + self.eps)  # (B, P)
        a = torch.sigmoid(self.beta + self.gamma * z) * mask  # (B, P)
        weights = a / a.sum(dim=1, keepdim=True).clamp_min(1e-12)  # (B, P)
        return (weights * logits).sum(dim=1), weights  # (B,), (B, P)


class BNSigmoidMIL(nn.Module):
    """The founding MIL head on spatial feature maps: 1×1 conv → position logits → aggregation.

    ``forward(X (B, N, d, h, w), mask (B, N)) -> (logits (B,), attention (B, N, h, w))``;
    :meth:`forward_images` does the same from the unpadded maps of a batch's images
    ``(M, d, h, w)`` and the number of images of each patient, in order (what end-to-end
    training uses). :meth:`position_logits` gives each image's ``(h, w)`` logits.
    """

    def __init__(self, in_dim: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, 1, kernel_size=1)
        self.aggregate = BNSigmoidAggregation(eps=eps, momentum=momentum)

    def position_logits(self, maps: torch.Tensor) -> torch.Tensor:
        return self.conv(maps).squeeze(1)  # (M, d, h, w) -> (M, h, w)

    def forward_images(self, maps: torch.Tensor, counts: list[int]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (patient logits (B,), weights (M, h, w), position logits (M, h, w))."""
        logits = self.position_logits(maps)  # (M, h, w)
        M, h, w = logits.shape
        lengths = [int(c) * h * w for c in counts]
        flat = list(torch.split(logits.reshape(-1), lengths))  # [(n_b*h*w,)]
        bag_logits, weights = self._aggregate(flat)  # (B,), [(n_b*h*w,)]
        return bag_logits, torch.cat(weights).reshape(M, h, w), logits

    def forward_rows(self, rows: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The same from each patient's positions as rows ``[(P_b, d)]`` (a 1×1 convolution
        is a linear map of the channels): -> (logits (B,), weights [(P_b,)], logits [(P_b,)]).
        Cheaper than :meth:`forward_images` on cached maps (no concatenation, no conv)."""
        weight = self.conv.weight.reshape(1, -1)  # (1, d)
        flat = [nn.functional.linear(r, weight, self.conv.bias).squeeze(-1)
                for r in rows]  # [(P_b,)]
        bag_logits, weights = self._aggregate(flat)  # (B,), [(P_b,)]
        return bag_logits, weights, flat

    def _aggregate(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        lengths = torch.tensor([f.numel() for f in flat])  # (B,)
        L = nn.utils.rnn.pad_sequence(flat, batch_first=True)  # (B, P)
        pmask = torch.arange(L.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # (B, P)
        bag_logits, weights = self.aggregate(L, pmask)  # (B,), (B, P)
        return bag_logits, [weights[b, :n] for b, n in enumerate(lengths.tolist())]

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            mask = torch.ones(X.shape[:2], dtype=torch.bool, device=X.device)  # (B, N)
        counts = mask.sum(dim=1).tolist()
        maps = X[mask]  # (M, d, h, w): real images only, patient after patient
        bag_logits, per_image, _ = self.forward_images(maps, counts)  # (B,), (M, h, w)
        attention = per_image.new_zeros(*mask.shape, *per_image.shape[1:])  # (B, N, h, w)
        attention[mask] = per_image
        return bag_logits, attention  # (B,), (B, N, h, w)
