"""The lab: an ECS-host look-alike inside private namespaces (real netfilter, Docker, IMDS)."""
