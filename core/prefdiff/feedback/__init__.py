"""Human feedback: the labeling web app and the reward model learned from its pairs.

* :mod:`.store`       the durable, lock-protected pair file every answer is appended to
* :mod:`.candidates`  which pairs to ask, from a sample folder or drawn from a model
* :mod:`.drawing`     conditions and samples as PNG for the page
* :mod:`.app`         the Starlette app (page and JSON API); :mod:`.server` runs it on uvicorn
* :mod:`.agreement`   agreement between labelers on shared pairs
* :mod:`.reward_model` Bradley-Terry reward model; :mod:`.training` fits it on a pair file
* :mod:`.demo`        simulated labelers end to end: label, learn a reward, DDPO on it
"""

from __future__ import annotations

from prefdiff.errors import UserError

INSTALL_HINT = "pip install 'prefdiff[feedback]'"


def require_web_stack() -> None:
    """Fail with the pip install that fixes it when the optional web stack is missing."""
    missing = []
    for module in ("starlette", "uvicorn", "httpx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"the labeling app needs {', '.join(missing)}; install them with: {INSTALL_HINT}")
