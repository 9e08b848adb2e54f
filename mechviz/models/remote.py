"""Remote (NDIF) runs of nnsight traces: the failures users hit, turned into messages that say what to do.

nnsight reports a failed remote job as ``nnsight.intervention.backends.remote.RemoteError`` carrying the server's
description (or "Failed to send request: <detail>" when the request itself was refused), and a host it cannot
reach as the socket's ``OSError`` (the ``/subscribe`` websocket opens first). :func:`explain` maps those to a
:class:`RemoteRunError` whose ``kind`` is one of :data:`KINDS`; :func:`check_ready` refuses a remote run with no API
key before anything is sent.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

__all__ = ["RemoteRunError", "KINDS", "explain", "explain_errors", "check_ready"]

#: What went wrong, as :attr:`RemoteRunError.kind` says it.
KINDS = ("no_key", "bad_key", "not_deployed", "version_mismatch", "unreachable", "server")


class RemoteRunError(RuntimeError):
    """A remote (NDIF) run failed; ``kind`` (one of :data:`KINDS`) says why, the message what to do."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _host() -> str:
    from nnsight.schema.config import CONFIG

    return CONFIG.API.HOST


def _versions() -> str:
    import nnsight

    return f"nnsight {nnsight.__version__} here"


def check_ready(adapter) -> None:
    """Refuse a remote run that cannot authenticate: no API key in nnsight's configuration."""
    from nnsight.schema.config import CONFIG

    if adapter.remote is True and not CONFIG.API.APIKEY:
        raise RemoteRunError("no_key", "no NDIF API key is configured: get one at https://login.ndif.us, then set "
                                       "NDIF_API_KEY in the environment or run nnsight.login() (it is saved in "
                                       "nnsight's own configuration); mechviz never stores it")


_PATTERNS = [  # (kind, regex on the lower-cased message), first match wins
    ("version_mismatch", r"version|incompatible client|upgrade nnsight|nnsight==|python-version"),
    ("bad_key", r"api key|api-key|apikey|unauthori[sz]ed|\b401\b|\b403\b|forbidden"),
    ("not_deployed", r"not (?:currently )?(?:deployed|running|found|available|supported)|no such model|unknown model|"
                     r"model.*(?:cold|offline)|\b404\b"),
    ("unreachable", r"connection|connect|name or service|timed out|timeout|temporary failure|unreachable|"
                    r"errno|\b50[234]\b"),
]


def explain(exc: BaseException, adapter=None) -> RemoteRunError | None:
    """The :class:`RemoteRunError` for nnsight's remote failure ``exc`` (None: not a remote failure).

    >>> from nnsight.intervention.backends.remote import RemoteError
    >>> explain(RemoteError("Model meta-llama/Llama-3.1-70B is not deployed")).kind
    'not_deployed'
    """
    from nnsight.intervention.backends.remote import RemoteError

    if isinstance(exc, RemoteRunError):
        return exc
    remote_error = isinstance(exc, RemoteError)
    package = (type(exc).__module__ or "").split(".")[0]
    network = isinstance(exc, OSError) or package.startswith(("websocket", "httpx", "httpcore"))
    if not (remote_error or network):
        return None
    text = str(exc)
    low = text.lower()
    kind = "unreachable" if network and not remote_error else next(
        (k for k, pattern in _PATTERNS if re.search(pattern, low)), "server")
    model = getattr(adapter, "name", "the model")
    advice = {
        "bad_key": "NDIF refused the API key: check NDIF_API_KEY / nnsight.login() (nnsight.whoami() shows whose it "
                   "is)",
        "not_deployed": f"{model} is not deployed on NDIF now: nnsight.status() lists the models it serves "
                        f"(nnsight.is_model_running({model!r}) checks this one); pick one of those, or run it "
                        "locally with dispatch=True",
        "version_mismatch": f"the NDIF server runs another nnsight version than this one ({_versions()}): install the "
                            "server's (nnsight.compare() shows both; pip install nnsight==<server version>)",
        "unreachable": f"could not reach NDIF at {_host()} (or the Hugging Face Hub, where nnsight looks up the "
                       "repo id that names the model): check the network, or NDIF_HOST if it is set",
        "server": "the NDIF job failed on the server",
    }[kind]
    return RemoteRunError(kind, f"{advice}. nnsight said: {text}")


@contextmanager
def explain_errors(adapter):
    """Around a trace of ``adapter``: refuse a remote run with no key, and re-raise nnsight's remote failures as
    :class:`RemoteRunError`. A local adapter's errors pass through untouched."""
    if not getattr(adapter, "remote", False):
        yield
        return
    check_ready(adapter)
    try:
        yield
    except Exception as exc:
        mapped = explain(exc, adapter)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc
