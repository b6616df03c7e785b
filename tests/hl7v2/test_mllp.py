"""MLLP framing (HL7 v2.5.1 Implementation Guide Appendix C): the deframer's edge cases, without sockets."""

from __future__ import annotations

from interop.hl7v2.mllp import Deframer, Oversized, frame


def test_deframe_frames_split_at_every_byte() -> None:
    stream = frame(b"MSH|one") + frame(b"MSH|two")
    d = Deframer(1024)
    got: list[bytes | Oversized] = []
    for i in range(len(stream)):
        got += d.feed(stream[i:i + 1])
    assert got == [b"MSH|one", b"MSH|two"]
    assert not d.partial


def test_deframe_several_frames_in_one_read_and_noise_between() -> None:
    d = Deframer(1024)
    got = d.feed(b"\r\n" + frame(b"A") + b"junk" + frame(b"B") + frame(b"C")[:3])
    assert got == [b"A", b"B"]
    assert d.partial and d.skipped == 6
    assert d.feed(frame(b"C")[3:]) == [b"C"]


def test_deframe_cut_off_frame_is_never_emitted() -> None:
    d = Deframer(1024)
    assert d.feed(b"\x0bMSH|^~\\&|LAB|X|||||ORU^R01|1|P|2.5.1\rPID|1\x1c") == []
    assert d.partial  # the connection closing now leaves nothing to store


def test_deframe_oversized_frame_keeps_head_and_resynchronises() -> None:
    d = Deframer(1024)
    big = b"MSH|^~\\&|LAB|X|||||ORU^R01|BIG1|P|2.5.1\r" + b"OBX|" + b"x" * 5000
    got: list[bytes | Oversized] = []
    stream = frame(big) + frame(b"MSH|next")
    for i in range(0, len(stream), 700):  # the end marker of the big frame may straddle two reads
        got += d.feed(stream[i:i + 700])
    assert isinstance(got[0], Oversized) and got[0].size == len(big)
    assert got[0].head.startswith(b"MSH|^~\\&|LAB|X")
    assert got[1:] == [b"MSH|next"]


def test_deframe_end_marker_split_across_reads_in_oversize_mode() -> None:
    d = Deframer(1024)
    got = d.feed(b"\x0b" + b"y" * 3000 + b"\x1c")
    assert got == []
    got = d.feed(b"\x0d" + frame(b"ok"))
    assert isinstance(got[0], Oversized) and got[0].size == 3000
    assert got[1] == b"ok"
