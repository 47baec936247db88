"""Which signals stop a build cleanly (`reportgen.staging.interrupts_as_errors`): SIGHUP as SIGTERM, unless the
process was started ignoring it (nohup). The end-to-end check, a build in a subprocess closed by each signal, is
`tests/test_errors.py::test_sigint_sigterm_and_sighup_leave_the_previous_site_intact`."""

from __future__ import annotations

import os
import signal

import pytest

from reportgen.staging import BuildInterrupted, interrupts_as_errors

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")


@pytest.fixture
def hup_restored():
    old = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, old)


def test_sighup_interrupts_like_sigterm(hup_restored):
    def before(signum, _frame):  # the handler in place before the build (not the default, which would end pytest)
        raise AssertionError("SIGHUP reached the handler the build replaces")

    signal.signal(signal.SIGHUP, before)
    cleaned = []
    with pytest.raises(BuildInterrupted, match="interrupted by SIGHUP") as caught:
        with interrupts_as_errors():
            try:
                os.kill(os.getpid(), signal.SIGHUP)  # Python runs the handler before the next line
                raise AssertionError("SIGHUP did not interrupt")
            finally:
                cleaned.append(True)
    assert cleaned == [True] and caught.value.exit_code == 128 + signal.SIGHUP == 129
    assert signal.getsignal(signal.SIGHUP) is before  # put back afterwards


def test_sighup_ignored_by_nohup_stays_ignored(hup_restored):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with interrupts_as_errors():
        os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
