"""The soak's judge (tools/soak.py): a frame missing anywhere is caught."""
import argparse
from collections import Counter

import pytest

from tools.soak import Soak


class Outdev:
    def __init__(self, received, lost=0):
        self.received = received
        self.problems = []
        self.lost = lost

    def kernel_drops(self):
        return self.lost


def soak(mode, sent, other=()):
    s = Soak(mode, argparse.Namespace(seed=1))
    s.sent = Counter(sent)
    s.other = Counter(dict(other))
    return s


CHARDEV = {"frames_in": (100, 90), "released": (95,), "dropped": (5, 0)}


def test_chardev_counts_that_add_up():
    assert soak("chardev", {"primary": 100, "secondary": 90})._accounting(
        CHARDEV, Outdev(95), None) == []


@pytest.mark.parametrize("sent, received, problem", [
    ({"primary": 101, "secondary": 90}, 95, "primary: wrote 101 records, it counted 100"),
    ({"primary": 100, "secondary": 91}, 95, "secondary: wrote 91 records, it counted 90"),
    ({"primary": 100, "secondary": 90}, 94, "it released 95 frames, the outdev got 94"),
])
def test_chardev_a_frame_missing_is_named(sent, received, problem):
    assert problem in soak("chardev", sent)._accounting(CHARDEV, Outdev(received), None)


def test_held_frames_at_the_end_are_a_problem():
    summary = {**CHARDEV, "released": (90,)}
    problems = soak("chardev", {"primary": 100, "secondary": 90})._accounting(
        summary, Outdev(90), None)
    assert problems == ["primary: 100 in, but 90 released + 5 dropped"]


XDP = {**CHARDEV, "kernel_dropped": (3, 0)}
VERDICTS = {"verdicts": {"compare": 193, "unsupported": 4,
                         "malformed": 2, "no_socket": 0}}


def test_xdp_kernel_drops_and_frames_not_compared_are_accounted():
    s = soak("xdp", {"primary": 106, "secondary": 93}, {"primary": 3, "secondary": 3})
    assert s._accounting(XDP, Outdev(95), VERDICTS) == []


def test_xdp_a_frame_the_classifier_did_not_see_is_named():
    s = soak("xdp", {"primary": 107, "secondary": 93}, {"primary": 3, "secondary": 3})
    problems = s._accounting(XDP, Outdev(95), VERDICTS)
    assert "primary: wrote 104 compared frames, it counted 100 + 3 dropped by the kernel" \
        in problems
    assert any(p.startswith("the classifiers sent 193 frames to be compared, 194") for p in
               problems)


def test_xdp_frames_lost_by_the_outdev_reader_are_reported():
    s = soak("xdp", {"primary": 106, "secondary": 93}, {"primary": 3, "secondary": 3})
    problems = s._accounting(XDP, Outdev(95, lost=2), VERDICTS)
    assert problems and "lost 2 frames" in problems[0]
