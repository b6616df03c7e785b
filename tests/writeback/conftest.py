"""The write-back tests use the job machinery's fixture (a database, blob and instance store, a queue)."""

from tests.jobs.conftest import jobs  # noqa: F401  (the fixture)
