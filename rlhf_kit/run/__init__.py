"""Running stages: configs and the parser (``configs``), a stage's lifecycle (``stage``), the launcher
(``launch``), RLHF rounds (``rounds``) and the Hub export (``hub``). The top floor below the CLI."""
