"""runtime/edge/link.py: a link trace read into the planner's throughput samples (pure: files the tests write)."""
import pytest

from runtime.edge.link import SAMPLE_S, TraceError, link_samples, load_trace, read_link_profile
from runtime.errors import UserError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_csv_gives_one_sample_per_second_and_an_outage_counts_as_one_packet(tmp_path):
    samples = read_link_profile(write(tmp_path, "steps.csv", "seconds,mbit\n0,4\n1,0.5\n2,0\n3,8\n"))
    assert SAMPLE_S == 1.0
    assert samples == pytest.approx([4.0, 0.5, 0.012, 8.0], abs=0.01)  # 0: one 1500-byte packet in the second


def test_a_mahimahi_trace_gives_the_packets_of_each_second(tmp_path):
    # 1000 packets in the first second (12 Mbit/s), 250 in the second (3 Mbit/s): a period of 2 s
    lines = [str(1 + i) for i in range(1000)] + [str(1000 + 4 * (i + 1)) for i in range(250)]
    assert read_link_profile(write(tmp_path, "two.up", "\n".join(lines) + "\n")) == pytest.approx([12.0, 3.0])


def test_a_trace_shorter_than_a_window_is_one_sample_of_its_rate(tmp_path):
    trace = load_trace(write(tmp_path, "short.csv", "0,2\n0.25,2\n"))  # 0.5 s at 2 Mbit/s, then it repeats
    assert link_samples(trace) == pytest.approx([2.0], rel=0.01)  # whole packets: 83 a period


def test_a_bad_link_profile_is_one_line_naming_the_file_and_line(tmp_path):
    with pytest.raises(UserError) as info:
        read_link_profile(write(tmp_path, "bad.csv", "seconds,mbit\n0,4\n1,fast\n"))
    assert isinstance(info.value, TraceError)
    assert str(info.value).startswith("trace bad.csv line 3: ") and "\n" not in str(info.value)
    with pytest.raises(UserError, match="cannot read"):
        read_link_profile(str(tmp_path / "missing.up"))
