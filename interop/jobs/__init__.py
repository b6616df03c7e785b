"""Jobs: the durable queue, the workers that run apps in child processes, and the executors (local, Celery)."""
