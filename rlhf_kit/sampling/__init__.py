"""Sampling from a policy: the one sampler (``generation``), and the two stages that turn samples into data:
rejection-sampled demonstrations (``demonstrations``) and K-wise comparisons ranked by a labeler (``compare``)."""
