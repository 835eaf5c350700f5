"""Every test of the repository (core, field plugins, tutorial plugin) runs with prefdiff's
public test fixtures: a fresh plugin manager, a private cache and one torch thread."""

pytest_plugins = ["prefdiff.testing"]
