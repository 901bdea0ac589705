"""The ground floor: user errors, where shipped files live, and a stage's output folder (config first, marker
last). Imports nothing else of rlhf_kit."""
