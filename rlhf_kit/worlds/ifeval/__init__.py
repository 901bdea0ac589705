"""The IFEval world: shipped base tasks with IFEval's verifiable instructions (``world``), judged by IFEval's own
checkers and a check that the answer does its task (``task_check``)."""
