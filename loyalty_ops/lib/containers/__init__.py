"""Container checks (the guide's `docker-compose ps` and `docker stats --no-stream`): pure evaluation in
``health``, reading the engine in ``engine``."""
