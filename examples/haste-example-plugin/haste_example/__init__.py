"""An example haste plugin package: one component per module, each module an entry point of the ``haste`` group.

- ``token_relation``: an alignment without trainable heads (the student's token similarities learn the teacher's);
- ``loss_target``: a termination policy (stop once an alignment term has stayed below a target);
- ``csv_monitor``: an observer that writes the logged metrics to ``<run_dir>/metrics.csv``.

``docs/writing_plugins.md`` of haste walks through it.
"""
