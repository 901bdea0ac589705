"""The reward model: InstructGPT's K-wise ranking loss and its trainer (``ranking``)."""
