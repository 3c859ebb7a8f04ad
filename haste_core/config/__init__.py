"""Recipes: YAML in, a frozen and fully validated ``Recipe`` out (``load_recipe``), before anything is built."""
