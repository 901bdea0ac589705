"""The alignment methods next to PPO, each on the same SFT policy, rankings and reward model so that one eval can
compare them (``dpo``: Direct Preference Optimization on the compare stage's rankings, TRL's ``DPOTrainer``)."""
