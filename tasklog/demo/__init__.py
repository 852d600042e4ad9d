"""A demo Celery app with the guide's demo tasks, captured by celery-tasklog."""
