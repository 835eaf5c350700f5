"""The fault and bad-input catalogue: prefdiff's reliability promises, run and counted.

``python -m prefdiff.reliability`` (``make reliability``) runs every case of
:func:`~prefdiff.reliability.cases.catalogue` against the installed ``prefdiff``
command, in subprocesses as a user runs it, and writes the counts to
``docs/reliability.json`` and the page ``docs/reliability.md``. The promises:

- **resume**: a ``prefdiff fit`` killed (SIGKILL) at any point resumes with
  ``--ckpt_path last`` to the very adapter an uninterrupted run writes, for
  every trainer family;
- **bench-kill**: a ``prefdiff bench`` killed at any point leaves the earlier
  results folder as it was, and the rerun completes;
- **mining-kill**: pair mining killed at any point leaves the earlier pairs
  and their files as they were, and the rerun completes;
- **disk-full**: a write that fails for lack of space is one clear error and
  leaves every file as it was;
- **bad-input**: every command given each class of bad input prints one line
  naming the culprit and exits with code 2.

It lives in the package (not in tools/) so that the case list is importable:
tests/test_reliability.py checks that the published JSON lists exactly the
cases the catalogue runs now, and runs its quick in-process part.
"""
