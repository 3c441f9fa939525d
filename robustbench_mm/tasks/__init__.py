"""Tasks: dataset + prompts + metric + success criterion; they build the attack Objective."""
