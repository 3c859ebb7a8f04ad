"""PLACEHOLDER (being written): registers nothing yet."""
