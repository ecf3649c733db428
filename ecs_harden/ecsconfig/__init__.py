"""/etc/ecs/ecs.config: the file model and the checks that keep the agent's flags set."""
