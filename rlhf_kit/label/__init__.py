"""Human labeling: a small server-rendered web app over SQLite where labelers rate, flag and rank K responses and
write demonstrations (InstructGPT App. B), and an export the reward and SFT stages train on as it is.

    rlhf-kit label add-user admin --admin --db labels.db
    rlhf-kit label import prompts.jsonl --db labels.db
    rlhf-kit label serve --db labels.db
    rlhf-kit label export --db labels.db --output-dir runs/demo/labels
"""
