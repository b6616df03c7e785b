"""The follow-up guidance knowledge base: markdown files in ``guidance/`` read into targets and snippets.

The format is described in ``guidance/README.md``. Pure parsing, no I/O beyond reading the files: an invalid
file raises :class:`KnowledgeBaseError` naming the file and the section, so a broken knowledge base never
loads half-way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from operators.app_result import Coding

#: The packaged knowledge base (shipped as package data, see pyproject.toml).
GUIDANCE_DIR = Path(__file__).resolve().parent / "guidance"
#: Files in the guidance folder that document it rather than hold guidance.
NOT_GUIDANCE = frozenset({"README.md"})
#: Said wherever a recommendation from this knowledge base is shown.
KB_NOTICE = (
    "Follow-up suggestions come from a demonstration knowledge base written by this project: "
    "not clinical advice, not reviewed by a clinician."
)

_COMMENT_LINES = re.compile(r"^[ \t]*<!--.*?-->[ \t]*\n", re.DOTALL | re.MULTILINE)  # whole lines: gone
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_FIELD = re.compile(r"^([a-z_]+):\s*(.*?)\s*$")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY = re.compile(r"^[a-z0-9_]+(=[A-Za-z0-9_.-]+)?$")
_BOUND = re.compile(r"^(-?\d+(?:\.\d+)?)\s+(\S+)$")
_SNIPPET_FIELDS = {"title", "applies_to", "kind", "code", "source"}
_TARGET_FIELDS = {"describes", "site", "below", "above"}


class KnowledgeBaseError(ValueError):
    """The guidance files are not valid: the message names the file and section."""


@dataclass(frozen=True)
class Bound:
    value: float
    unit: str  # UCUM


@dataclass(frozen=True)
class Target:
    """Something a result can say that guidance may answer.

    ``key`` is a finding's name, ``<classification>=<class>``, or (with ``site``) a name for a notable
    measurement: one whose finding site is ``site`` and whose value lies below ``below`` / above ``above``.
    """

    key: str
    topic: str
    describes: str
    site: Coding | None = None
    below: Bound | None = None
    above: Bound | None = None

    def notable(self, value: float, unit: str) -> bool:
        """Whether a measurement of this target's site with ``value`` in ``unit`` is notable."""
        if self.below is not None and unit == self.below.unit and value < self.below.value:
            return True
        return self.above is not None and unit == self.above.unit and value > self.above.value


@dataclass(frozen=True)
class Snippet:
    """One follow-up action in our own words, with what to order and the guidance it paraphrases."""

    id: str
    file: str  # file name inside guidance/
    topic: str
    title: str
    applies_to: tuple[str, ...]
    kind: Literal["test", "referral"]
    code: Coding
    source: str
    text: str

    @property
    def ref(self) -> str:
        """The citation: ``guidance/<file>#<id>``."""
        return f"guidance/{self.file}#{self.id}"

    def document(self) -> str:
        """What is embedded for retrieval: the title and the text."""
        return f"{self.title}. {self.text}"


@dataclass(frozen=True)
class KnowledgeBase:
    snippets: dict[str, Snippet]
    targets: dict[str, Target]
    #: SHA-256 over every guidance file's name and bytes: the store is rebuilt when it changes.
    sha256: str
    topics: tuple[str, ...] = field(default=())

    def for_target(self, key: str) -> list[Snippet]:
        return [s for s in self.snippets.values() if key in s.applies_to]


def _coding(text: str, where: str) -> Coding:
    parts = [p.strip() for p in text.split("|")]
    if len(parts) != 3 or not all(parts):
        raise KnowledgeBaseError(f"{where}: a code is 'system | code | display', got {text!r}")
    system, code, display = parts
    if not system.startswith("http"):
        raise KnowledgeBaseError(f"{where}: code system must be a URI, got {system!r}")
    return Coding(system=system, code=code, display=display)


def _bound(text: str, where: str) -> Bound:
    match = _BOUND.match(text)
    if not match:
        raise KnowledgeBaseError(f"{where}: a bound is '<number> <UCUM unit>', got {text!r}")
    return Bound(float(match.group(1)), match.group(2))


def _fields(lines: list[str], allowed: set[str], where: str) -> tuple[dict[str, str], str]:
    """Leading ``key: value`` lines, then (after a blank line) the body text joined into one paragraph."""
    values: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].strip():
        match = _FIELD.match(lines[i].strip())
        if not match:
            raise KnowledgeBaseError(f"{where}: expected 'field: value', got {lines[i].strip()!r}")
        key, value = match.groups()
        if key not in allowed:
            raise KnowledgeBaseError(f"{where}: unknown field {key!r} (allowed: {', '.join(sorted(allowed))})")
        if key in values:
            raise KnowledgeBaseError(f"{where}: field {key!r} given twice")
        values[key] = value
        i += 1
    body = " ".join(line.strip() for line in lines[i:] if line.strip())
    return values, body


def parse_guidance(name: str, text: str) -> tuple[list[Target], list[Snippet]]:
    """Targets and snippets of one guidance file (``name`` is its file name, used in citations)."""
    text = _COMMENT.sub("", _COMMENT_LINES.sub("", text))
    head, *sections = re.split(r"^## ", text, flags=re.MULTILINE)
    topics = re.findall(r"^topic:\s*([a-z0-9_-]+)\s*$", head, flags=re.MULTILINE)
    if len(topics) != 1:
        raise KnowledgeBaseError(f"{name}: needs exactly one 'topic: <word>' line before the first '##'")
    topic = topics[0]
    targets: list[Target] = []
    snippets: list[Snippet] = []
    for section in sections:
        heading, *lines = section.split("\n")
        kind, _, ident = heading.strip().partition(":")
        ident = ident.strip()
        where = f"{name} ## {heading.strip()}"
        if kind == "target":
            if not _KEY.match(ident):
                raise KnowledgeBaseError(f"{where}: a target key is a finding name or name=class, got {ident!r}")
            values, body = _fields(lines, _TARGET_FIELDS, where)
            if body:
                raise KnowledgeBaseError(f"{where}: a target has fields only, no text")
            if "describes" not in values:
                raise KnowledgeBaseError(f"{where}: missing 'describes:'")
            site = _coding(values["site"], where) if "site" in values else None
            below = _bound(values["below"], where) if "below" in values else None
            above = _bound(values["above"], where) if "above" in values else None
            if (site is None) != (below is None and above is None):
                raise KnowledgeBaseError(f"{where}: a measurement target needs 'site:' and 'below:' or 'above:'")
            targets.append(Target(ident, topic, values["describes"], site, below, above))
        elif kind == "snippet":
            if not _ID.match(ident):
                raise KnowledgeBaseError(f"{where}: a snippet id is lower-case letters, digits and '-'")
            values, body = _fields(lines, _SNIPPET_FIELDS, where)
            missing = _SNIPPET_FIELDS - set(values)
            if missing:
                raise KnowledgeBaseError(f"{where}: missing {', '.join(sorted(missing))}")
            if not body:
                raise KnowledgeBaseError(f"{where}: no text")
            if values["kind"] not in ("test", "referral"):
                raise KnowledgeBaseError(f"{where}: kind is 'test' or 'referral', got {values['kind']!r}")
            applies = tuple(a.strip() for a in values["applies_to"].split(",") if a.strip())
            if not applies or not all(_KEY.match(a) for a in applies):
                raise KnowledgeBaseError(f"{where}: applies_to lists target keys, got {values['applies_to']!r}")
            snippets.append(Snippet(
                id=ident, file=name, topic=topic, title=values["title"], applies_to=applies,
                kind="test" if values["kind"] == "test" else "referral", code=_coding(values["code"], where),
                source=values["source"], text=body,
            ))
        else:
            raise KnowledgeBaseError(f"{where}: a section is '## target: <key>' or '## snippet: <id>'")
    return targets, snippets


def load_knowledge_base(folder: str | Path = GUIDANCE_DIR) -> KnowledgeBase:
    """Read every ``*.md`` in ``folder`` (but its README) into one knowledge base, checked as a whole."""
    root = Path(folder)
    files = sorted(p for p in root.glob("*.md") if p.name not in NOT_GUIDANCE)
    if not files:
        raise KnowledgeBaseError(f"no guidance files in {root}")
    digest = hashlib.sha256()
    targets: dict[str, Target] = {}
    snippets: dict[str, Snippet] = {}
    for path in files:
        raw = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        file_targets, file_snippets = parse_guidance(path.name, raw.decode("utf-8"))
        for target in file_targets:
            if target.key in targets:
                raise KnowledgeBaseError(f"{path.name}: target {target.key!r} is also defined elsewhere")
            targets[target.key] = target
        for snippet in file_snippets:
            if snippet.id in snippets:
                raise KnowledgeBaseError(f"{path.name}: snippet id {snippet.id!r} is also used in "
                                         f"{snippets[snippet.id].file}")
            snippets[snippet.id] = snippet
    for snippet in snippets.values():
        for key in snippet.applies_to:
            answered = targets.get(key)
            if answered is not None and answered.topic != snippet.topic:
                raise KnowledgeBaseError(f"{snippet.file} ## snippet: {snippet.id}: target {key!r} is in topic "
                                         f"{answered.topic!r}, the snippet in {snippet.topic!r}")
    unanswered = [k for k in targets if not any(k in s.applies_to for s in snippets.values())]
    if unanswered:
        raise KnowledgeBaseError(f"targets without any snippet: {', '.join(unanswered)}")
    topics = tuple(sorted({s.topic for s in snippets.values()}))
    return KnowledgeBase(snippets=snippets, targets=targets, sha256=digest.hexdigest(), topics=topics)
