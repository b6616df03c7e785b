"""Sample messages and small helpers for the HL7 v2 tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import ServerProc

MESSAGES = Path(__file__).with_name("messages")


def sample(name: str) -> bytes:
    """A sample message as stored (segments end in CR; read as bytes, never with universal newlines)."""
    return (MESSAGES / name).read_bytes()


def original(raw: bytes) -> bytes:
    """``raw`` in original acknowledgment mode: MSH-15 and MSH-16 emptied (the lab samples ask for accept
    acknowledgments only, ``AL|NE``, which the node answers ``CA`` before writing the resources)."""
    head, sep, rest = raw.partition(b"\r")
    fields = head.split(b"|")
    if len(fields) > 15:
        fields[14:16] = [b"", b""]
    return b"|".join(fields) + sep + rest


def segments(ack: bytes) -> dict[str, list[str]]:
    """An ACK's segments by ID, split into fields (MSH-1 is the separator, so MSH fields keep HL7 numbering)."""
    out: dict[str, list[str]] = {}
    for line in ack.decode("latin-1").strip("\r").split("\r"):
        fields = line.split("|")
        out[fields[0]] = ["MSH", "|", *fields[1:]] if fields[0] == "MSH" else fields
    return out


def oru(control_id: str, *, patient: str = "MRN900001", filler: str = "FIL-1", value: str = "5.4",
        status: str = "F", sender: str = "LAB_LIS", acks: str = "") -> bytes:
    """A small ORU^R01 (one OBR, two OBX) with the given control ID, patient and filler order number; ``acks``
    sets MSH-15 and MSH-16 (e.g. ``AL|NE``: enhanced mode, accept acknowledgment only), else original mode."""
    msh_end = f"|||{acks}" if acks else ""
    return "\r".join([
        f"MSH|^~\\&|{sender}|GENLAB|INTEROP|GENHOSP|20261120083015||ORU^R01^ORU_R01|{control_id}|P|2.5.1{msh_end}",
        f"PID|1||{patient}^^^GENHOSP^MR||Doe^Jane||19800101|F",
        f"OBR|1|PLC-{filler}^OE|{filler}^GENLAB|24331-1^Lipid panel^LN|||20261120071500||||||||||||||"
        f"20261120082900||CH|{status}",
        f"OBX|1|NM|2093-3^Cholesterol [Mass/volume] in Serum or Plasma^LN||{value}|mmol/L^^UCUM|<5.2|H|||{status}",
        f"OBX|2|NM|2571-8^Triglyceride [Mass/volume] in Serum or Plasma^LN||1.3|mmol/L^^UCUM|<1.7|N|||{status}",
    ]).encode() + b"\r"


def database_url(server: ServerProc) -> str:
    """The database a test server writes to."""
    return server.extra_env.get("INTEROP_DATABASE_URL") or f"sqlite:///{server.data_dir}/interop.db"
