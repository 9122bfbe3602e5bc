"""gradtape's HTTP layer: FastAPI routes, request models, errors and settings."""
