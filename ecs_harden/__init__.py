"""ecs-harden: keeps ECS container instances from leaking the instance role to containers."""

__version__ = "0.3.0"
