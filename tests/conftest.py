"""Every test gets a fresh plugin manager, a private bench cache and one torch thread."""

from prefdiff.testing import isolated_prefdiff, one_thread  # noqa: F401  (autouse fixtures)
