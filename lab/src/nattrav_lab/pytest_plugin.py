"""pytest plugin of nattrav-lab (entry point ``pytest11: nattrav_lab``).

Fixtures:

* ``lab``: a lab, module-scoped, so a topology comes up once per test module. Parametrise it
  indirectly: ``@pytest.mark.parametrize("lab", ["eim", "symmetric"], indirect=True)``; a
  parameter may also be a dict of ``Lab`` options with a ``topology`` key, e.g.
  ``{"topology": "eim", "second_site": "symmetric"}``. Unparametrised it is ``eim``.
  Impairment knobs a test turned on are turned off again after that test.
* ``lab_factory``: ``lab_factory("symmetric", wan_mtu=1400, ...)`` for labs with custom
  options; every lab it made is torn down after the test.

Tests using either fixture (or marked ``@pytest.mark.lab``) need root: without it they FAIL
with a message saying so, they are not skipped, unless ``NATTRAV_SKIP_LAB=1`` is set, which
skips them explicitly. Every lab is torn down when its fixture ends, whether the test passed
or not, and at the end of the session any lab this process still owns is torn down too; at the
start of the session labs left behind by dead processes are reaped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nattrav_lab.lab import Lab

_TOOLS = ("ip", "nft", "turnserver", "miniupnpd", "iptables-restore", "tc")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab: needs root and the network lab (namespaces, coturn, miniupnpd)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "lab" in names or "lab_factory" in names:
            item.add_marker(pytest.mark.lab)


def require_lab() -> None:
    """Fail (not skip) unless the lab can run here; skip only on NATTRAV_SKIP_LAB=1."""
    if os.environ.get("NATTRAV_SKIP_LAB") == "1":
        pytest.skip("NATTRAV_SKIP_LAB=1: network lab tests skipped on request")
    if os.geteuid() != 0:
        pytest.fail(
            "this test needs the nattrav network lab, which needs root (network namespaces, "
            "nftables, coturn, miniupnpd); run as root, or set NATTRAV_SKIP_LAB=1 to skip lab "
            "tests explicitly",
            pytrace=False,
        )
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"the network lab needs {', '.join(missing)}: run `bash lab/install-deps.sh` as root",
            pytrace=False,
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        require_lab()


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("NATTRAV_SKIP_LAB") == "1" or os.geteuid() != 0:
        return
    from nattrav_lab.lab import reap

    try:
        reap()  # labs whose owning process died (a killed test run)
    except Exception as exc:  # never block a session on someone else's debris
        session.config.issue_config_time_warning(
            pytest.PytestWarning(f"nattrav-lab: reaping stale labs failed: {exc}"), 2
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if os.environ.get("NATTRAV_SKIP_LAB") == "1" or os.geteuid() != 0:
        return
    from nattrav_lab.lab import Lab
    from nattrav_lab.registry import Owner, list_records, state_root

    me = Owner.current()
    for record in list_records(state_root()):
        if record.owner == me:
            Lab._from_record(record, None).down()


def _make(param: Any) -> Lab:
    from nattrav_lab.lab import Lab

    if isinstance(param, dict):
        options = dict(param)
        topo = options.pop("topology", "eim")
        return Lab(topo, **options)
    return Lab(str(param))


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab of the parametrised topology (default eim), up for the whole module."""
    require_lab()
    instance = _make(getattr(request, "param", "eim"))
    try:
        instance.bring_up()
        yield instance
    finally:
        instance.down()


@pytest.fixture(autouse=True)
def _nattrav_lab_reset_knobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Turn off impairments a test set on the shared module-scoped lab."""
    yield
    # Only a lab this test really got (its setup may have failed: don't set it up again).
    instance = getattr(request.node, "funcargs", {}).get("lab")
    if instance is not None and instance.is_up:
        for site, knobs in list(instance._impair.items()):
            if knobs:
                instance.clear_impairments(site=site)


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Make labs with custom options: ``lab_factory("eim", second_site="symmetric")``."""
    from nattrav_lab.lab import Lab

    require_lab()
    made: list[Lab] = []

    def make(topology: str = "eim", **options: Any) -> Lab:
        instance = Lab(topology, **options)
        made.append(instance)
        instance.bring_up()
        return instance

    try:
        yield make
    finally:
        errors = []
        for instance in reversed(made):
            try:
                instance.down()
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))
