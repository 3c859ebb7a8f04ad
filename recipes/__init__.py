"""The recipes shipped with haste, installed as the data package ``haste_recipes`` (``haste recipes`` lists them)."""
