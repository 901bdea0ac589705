"""Data: the canonical rows every stage reads and writes (``rows``), datasets loaded and tokenized for a stage
(``datasets``), and data cards for public datasets (``cards``)."""
