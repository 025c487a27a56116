"""Containers domain: the container_health asset (group reports) and its checks."""
