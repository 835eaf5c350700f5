"""Threads from the free cores, and OpenMP asked to sleep when the machine is shared."""

import pytest

from prefdiff import threads


@pytest.mark.parametrize("cores, load, free", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 3.7, 1), (16, 5.2, 11)])
def test_free_cores_are_the_cores_the_load_leaves(cores, load, free):
    assert threads.free_cores(cores, load) == free


def test_a_shared_machine_gets_a_passive_wait_policy(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "free_cores", lambda: 1)
    environ = {}
    threads.prepare_threads(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    pinned = {"OMP_NUM_THREADS": "2"}  # the user chose: leave OpenMP alone
    threads.prepare_threads(pinned)
    assert pinned == {"OMP_NUM_THREADS": "2"}
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    idle = {}
    threads.prepare_threads(idle)
    assert idle == {}


def test_choose_threads_prefers_the_flag_then_the_variable_then_the_free_cores(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "free_cores", lambda: 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.choose_threads(3) == 3
        assert threads.choose_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.choose_threads() == 1
    finally:
        torch.set_num_threads(before)
