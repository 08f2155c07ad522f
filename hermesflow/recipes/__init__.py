"""Recipes: short modules that wire the components, chosen by a verb's config, round by round. `run`
(evaluate, then rounds of curate → train → evaluate, resuming at any stage) and `ablate` (arms
compared fairly, with seeds and paired intervals). Only recipes and the CLI take the run
configuration, and only they hand the shapes world to the components."""
