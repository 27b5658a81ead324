"""What every domain service shares when it runs: the FastAPI app and its lifespan (`app`), the running
parts (`state`), applying one consumed event (`events`), HTTP error mapping (`http_errors`) and the
token-protected internal routes the admin API fans out to (`internal_routes`)."""
