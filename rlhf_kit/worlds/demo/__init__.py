"""The demo world: one implementation of rlhf_kit's labeler and judge interfaces, and its embedded tiny model.

- :mod:`rlhf_kit.worlds.demo.world`: a small controlled language with InstructGPT's use-case categories;
- :mod:`rlhf_kit.worlds.demo.gold`: its gold rules, the ``gold`` judge;
- :mod:`rlhf_kit.worlds.demo.simulated`: the ``simulated`` labeler (gold score plus noise);
- :mod:`rlhf_kit.worlds.demo.tiny`: the word-level tokenizer and tiny Llama built by the demo's base stage.

Nothing else in ``rlhf_kit`` imports this package (tests/test_layout.py checks the import graph); configs name
its labeler and judge by registered name (:mod:`rlhf_kit.worlds`).
"""
