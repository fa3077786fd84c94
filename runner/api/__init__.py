"""The public entry points that assemble the wings: ``setup()`` (targets, agent, session) and ``replay_run()``."""
