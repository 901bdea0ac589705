"""Evaluation against a judge the reward model never saw (``evaluation``), the run report (``report``) and the
metrics shipped as local ``evaluate`` modules (``metrics``)."""
